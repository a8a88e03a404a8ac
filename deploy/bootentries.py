"""Boot Loader Specification type 1 entries for the deployments, kept in the ESP.

    loader/entries/rpmimg-<ID>-<KVER>[+LEFT[-DONE]].conf   one per deployment and kernel
    rpmimg/<sha256>                                        kernels and initrds by content

`sync` makes the ESP match the state: the entries rpmimg made and the files they use, and
nothing else of the ESP is touched. Entries sort by `sort-key rpmimg` and a `version` of
TIER.ID (tier 2: the default, 1: other deployments, 0: bad or failed), newest first, so
systemd-boot's default is the state's default. A new entry for the default carries a boot
counter (`+N`): systemd-boot counts its tries down, `systemd-bless-boot` removes the counter
once `boot-complete.target` is reached, and an entry with no tries left sorts last.

Order of writes, so that a kill at any point leaves a bootable ESP whose first entry is the
old or the new default: stale entries go, then files not needed, then new files, then the
new default's entry (it outranks the old one, which is still tier 2 and older), then
the others are rewritten, then files nothing uses any more go. Each file is written to a
temporary name and renamed; systemd-boot reads only `*.conf`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deploy import bootfiles
from deploy.bootfiles import KernelFiles
from deploy.errors import SpaceError
from deploy.esp import Esp
from deploy.state import State
from deploy.system import System
from host.files import read_limited
from host.log import get as logger

log = logger(__name__)

ENTRIES = "loader/entries"
FILES = "rpmimg"
DEFAULT_TRIES = 3
# Room for the entry files and FAT's allocation rounding.
ENTRY_RESERVE = 64 << 10
_NAME = re.compile(
    r"^rpmimg-(?P<id>[0-9]+)-(?P<kver>[A-Za-z0-9._+~-]+?)(\+(?P<left>[0-9]+)(-(?P<done>[0-9]+))?)?\.conf$"
)


@dataclass(frozen=True)
class EntryName:
    """The parts of a boot entry's file name: deployment, kernel, and its boot counters."""

    deployment: str
    kernel_version: str
    left: int | None = None  # None: no counter (blessed, or never counted)
    done: int = 0

    @classmethod
    def parse(cls, name: str) -> EntryName | None:
        m = _NAME.match(name)
        if not m:
            return None
        left = int(m["left"]) if m["left"] is not None else None
        return cls(m["id"], m["kver"], left, int(m["done"] or 0))

    @property
    def key(self) -> tuple[str, str]:
        return (self.deployment, self.kernel_version)

    @property
    def file(self) -> str:
        counter = "" if self.left is None else f"+{self.left}" + (f"-{self.done}" if self.done else "")
        return f"rpmimg-{self.deployment}-{self.kernel_version}{counter}.conf"

    @property
    def assessment(self) -> str:
        if self.left is None:
            return "good"
        return "bad" if self.left == 0 else "counting"


def tries(system: System, override: int | None) -> int:
    """Boot tries for a new default: --tries, else /etc/kernel/tries, else 3."""
    if override is not None:
        return override
    try:
        return max(1, int((system.sysroot / "etc/kernel/tries").read_text().strip()))
    except (FileNotFoundError, ValueError):
        return DEFAULT_TRIES


def existing(esp: Esp) -> dict[tuple[str, str], EntryName]:
    found = {}
    for name in esp.listdir(ENTRIES):
        e = EntryName.parse(name)
        if e is not None:
            found[e.key] = e
    return found


def _tier(current: State, deployment_id: str, failed: Iterable[str]) -> int:
    if deployment_id == current.default:
        return 2
    return 0 if deployment_id in current.bad or deployment_id in set(failed) else 1


def entry_text(system: System, current: State, deployment_id: str, k: KernelFiles,
               failed: Iterable[str] = ()) -> bytes:
    from deploy.bootselect import kernel_arguments

    d = current.get(deployment_id)
    return (
        f"title {d.image} {d.version} (rpmimg deployment {d.id}, {k.version})\n"
        f"sort-key rpmimg\n"
        f"version {_tier(current, deployment_id, failed)}.{int(d.id):08d}\n"
        f"linux /{FILES}/{k.kernel}\n"
        f"initrd /{FILES}/{k.initrd}\n"
        f"options {' '.join([kernel_arguments(system, deployment_id), *extra_arguments(system, d.id)])}\n"
    ).encode()


def extra_arguments(system: System, deployment_id: str) -> list[str]:
    """The deployment's own additions to the command line: its root's /etc/kernel/cmdline
    (console=, quiet...), one line, as kernel-install reads it."""
    path = system.layout.root_of(deployment_id) / "etc/kernel/cmdline"
    try:
        text = read_limited(path, 8192).decode(errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return []
    words = " ".join(text.split()).split(" ") if text.strip() else []
    return [w for w in words if w and w.isprintable() and len(w) < 512][:64]


def wanted(system: System, current: State) -> dict[tuple[str, str], KernelFiles]:
    return {
        (d.id, k.version): k
        for d in current.deployments for k in bootfiles.load(system, d.id)
    }


def _referenced(esp: Esp, names: Iterable[str]) -> set[str]:
    used = set()
    for name in names:
        for line in (esp.read(f"{ENTRIES}/{name}") or b"").decode(errors="replace").splitlines():
            key, _, value = line.partition(" ")
            if key in ("linux", "initrd") and value.strip().startswith(f"/{FILES}/"):
                used.add(value.strip()[len(FILES) + 2 :])
    return used


def check_space(esp: Esp, system: System, current: State, new: Iterable[KernelFiles]) -> None:
    """Refuse (SpaceError) unless the ESP can take the new kernels' files once the files no
    deployment of the state needs are gone. Checked before anything is staged."""
    want = wanted(system, current)
    keep = {sha for k in want.values() for sha in k.files()}
    on_esp = {n: esp.size(f"{FILES}/{n}") or 0 for n in esp.listdir(FILES)}
    freeable = sum(size for n, size in on_esp.items() if n not in keep)
    needed: dict[str, int] = {}
    for k in new:
        needed.update({sha: size for sha, size in k.files().items() if sha not in on_esp})
    need = sum(needed.values()) + ENTRY_RESERVE
    free = esp.free()
    if need > free + freeable:
        raise SpaceError(
            f"{esp.name}: not enough space in the boot partition: the new kernel and initrd"
            f" need {need >> 10} KiB, {free >> 10} KiB are free and {freeable >> 10} KiB can be"
            " freed; nothing was changed (remove old deployments with `rpmimg cleanup`)"
        )


def sync(esp: Esp, system: System, current: State, *, count_tries: int = DEFAULT_TRIES,
         failed: Iterable[str] = ()) -> None:
    """Make the ESP's rpmimg entries and files match the state (see the module's docstring)."""
    failed = tuple(failed)
    want = wanted(system, current)
    have = existing(esp)
    for name in esp.listdir(ENTRIES):  # what a killed run was writing
        if name.startswith(".rpmimg-") and ".tmp-" in name:
            esp.remove(f"{ENTRIES}/{name}")
    for key, e in have.items():
        if key not in want:
            esp.remove(f"{ENTRIES}/{e.file}")
    kept = [e.file for k, e in have.items() if k in want]
    needed = {sha for k in want.values() for sha in k.files()}
    in_use = needed | _referenced(esp, kept)
    for name in esp.listdir(FILES):
        if name not in in_use:
            esp.remove(f"{FILES}/{name}")
    present = set(esp.listdir(FILES))
    for sha in sorted(needed - present):
        esp.write(f"{FILES}/{sha}", bootfiles.files_dir(system) / sha)
    # The default first: it outranks every other entry as soon as it is written.
    order = sorted(want, key=lambda k: (k[0] != current.default, k))
    for key in order:
        text = entry_text(system, current, key[0], want[key], failed)
        found = have.get(key)
        counted = key[0] == current.default and count_tries > 0
        e = found or EntryName(key[0], key[1], count_tries if counted else None)
        if esp.read(f"{ENTRIES}/{e.file}") != text:
            esp.write(f"{ENTRIES}/{e.file}", text)
    for name in esp.listdir(FILES):
        if name not in needed:
            esp.remove(f"{FILES}/{name}")


def recount(esp: Esp, deployment_id: str, count_tries: int) -> None:
    """Give the deployment's entries that have no tries left a fresh counter (it is being
    made the default again on purpose): the new name first, then the old one goes."""
    for e in existing(esp).values():
        if e.deployment == deployment_id and e.left == 0:
            fresh = EntryName(e.deployment, e.kernel_version, count_tries if count_tries > 0 else None)
            esp.write(f"{ENTRIES}/{fresh.file}", esp.read(f"{ENTRIES}/{e.file}") or b"")
            esp.remove(f"{ENTRIES}/{e.file}")


def states(esp: Esp | None) -> dict[str, list[EntryName]]:
    """Each deployment's entries as the ESP shows them (empty without an ESP)."""
    out: dict[str, list[EntryName]] = {}
    if esp is None:
        return out
    for e in existing(esp).values():
        out.setdefault(e.deployment, []).append(e)
    return out


def find_esp(sysroot: Path) -> Path | None:
    """The mounted XBOOTLDR or ESP as bootctl finds them, for the running system only."""
    from host.run import CommandError, run

    if sysroot != Path("/"):
        return None
    for flag in ("--print-boot-path", "--print-esp-path"):
        try:
            out = run(["bootctl", flag]).stdout.decode().strip()
        except CommandError:
            continue
        if out:
            return Path(out)
    return None
