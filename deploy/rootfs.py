"""A deployment's writable root: `/etc`, the merged-usr links, empty mount points, fstab.

    TOP/@rpmimg/roots/<ID>/     the root subvolume booted with rootflags=subvol=...
      etc/                      the deployment's configuration (rolled back with its /usr)
      etc/fstab                 mounts the shared /var and binds /home, /root, /srv, /opt from it
      bin -> usr/bin, sbin -> usr/sbin, lib -> usr/lib, lib64 -> usr/lib64
      usr/ var/ proc/ sys/ dev/ run/ tmp/ boot/ efi/ mnt/ media/ home/ root/ srv/ opt/
    TOP/@rpmimg/var/            one subvolume shared by every deployment, never rolled back

A first deployment's root starts from the /etc of the system rpmimg adopts (the sysroot's,
when it has one); a later one is a snapshot of the root of the deployment it updates. The
image's vendor defaults (/usr/share/factory/etc) are merged in after the /usr tree is built.
A root is made under staging/ and moved into roots/ with its /usr, under the same discard
marker (deploy.records), so a killed run leaves nothing half made.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from deploy.layout import DIRNAME
from deploy.system import System
from host import kernel
from host.files import write_atomically
from host.log import get as logger
from host.run import run

log = logger(__name__)

LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
MOUNT_POINTS = ("usr", "var", "proc", "sys", "dev", "run", "tmp", "boot", "efi", "mnt", "media")
# Shared like /var, never rolled back: bind-mounted from a directory of the shared /var.
SHARED = {"home": ("home", 0o755), "root": ("roothome", 0o700), "srv": ("srv", 0o755),
          "opt": ("opt", 0o755)}
MODES = {"tmp": 0o1777, "root": 0o700, "proc": 0o555, "sys": 0o555}
BEGIN, END = "# rpmimg: begin", "# rpmimg: end"
# Mount points the rpmimg block of fstab owns; other lines naming them are commented out.
MANAGED = frozenset({"/", "/usr", "/var", *(f"/{n}" for n in SHARED)})


_VAR_REF = re.compile(rf"subvol=/{re.escape(DIRNAME)}/(var-[0-9]+)\b")


def staging_path(system: System, deployment_id: str) -> Path:
    return system.layout.staging / f"root-{deployment_id}"


def ensure_var(system: System) -> None:
    """Create the shared /var subvolume (with the directories the binds need) if missing."""
    var = system.layout.var
    if not os.path.lexists(var):
        tmp = system.layout.staging / "var"
        if os.path.lexists(tmp):
            kernel.subvolume_delete(tmp)
        kernel.subvolume_create(tmp)
        os.rename(tmp, var)
    for _name, (sub, mode) in SHARED.items():
        path = var / sub
        if not os.path.lexists(path):
            os.mkdir(path, mode)


def fstab_block(uuid_device: str, var_subvol: str) -> str:
    lines = [
        BEGIN,
        "# /var is one subvolume shared by every deployment; it is never rolled back.",
        f"{uuid_device} /var btrfs subvol={var_subvol} 0 0",
    ]
    for name, (sub, _mode) in SHARED.items():
        lines.append(f"/var/{sub} /{name} none bind,x-systemd.requires-mounts-for=/var 0 0")
    lines.append(END)
    return "\n".join(lines) + "\n"


def merged_fstab(existing: str, block: str) -> str:
    """existing with rpmimg's block replaced (or appended) and any other line mounting one of
    the MANAGED points commented out: root and /usr come from the kernel command line."""
    out: list[str] = []
    inside = False
    for line in existing.splitlines():
        if line.strip() == BEGIN:
            inside = True
            continue
        if line.strip() == END:
            inside = False
            continue
        if inside:
            continue
        fields = line.split()
        if fields and not fields[0].startswith("#") and len(fields) >= 2 and fields[1] in MANAGED:
            line = f"# rpmimg: mounted by the block below: {line}"
        out.append(line)
    text = "\n".join(out)
    return (text + "\n" if text else "") + block


def _skeleton(root: Path) -> None:
    for name in (*MOUNT_POINTS, *SHARED):
        path = root / name
        if not os.path.lexists(path):
            os.mkdir(path, MODES.get(name, 0o755))
            os.chmod(path, MODES.get(name, 0o755))
    for name, target in LINKS.items():
        path = root / name
        if os.path.islink(path) and os.readlink(path) == target:
            continue
        if os.path.lexists(path):
            log.warning("%s: replaced by the merged-usr link to %s", path, target)
            if os.path.isdir(path) and not os.path.islink(path):
                run(["rm", "-rf", "--one-file-system", "--", os.fspath(path)])
            else:
                os.unlink(path)
        os.symlink(target, path)
    etc = root / "etc"
    if not os.path.lexists(etc):
        os.mkdir(etc, 0o755)
    elif not stat.S_ISDIR(os.lstat(etc).st_mode):
        raise NotADirectoryError(f"{etc}: not a directory")


def write_fstab(root: Path, uuid_device: str, var_subvol: str) -> None:
    path = root / "etc" / "fstab"
    try:
        existing = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        existing = ""
    text = merged_fstab(existing, fstab_block(uuid_device, var_subvol))
    if text != existing:
        if path.is_symlink():
            path.unlink()
        write_atomically(path, text.encode("utf-8", errors="surrogateescape"))


def unmask_tmpfiles(root: Path) -> list[str]:
    """Remove masks (links to /dev/null) of the units that create /var from tmpfiles.d."""
    removed = []
    for unit in ("systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service"):
        path = root / "etc/systemd/system" / unit
        if path.is_symlink() and os.readlink(path) == "/dev/null":
            path.unlink()
            removed.append(unit)
    return removed


def make_root(system: System, deployment_id: str, device: str, base: str | None,
              adopt: bool, var_subvol: str | None = None) -> Path:
    """Make the root of deployment_id under staging/: a snapshot of base's root if base
    has one, else new (with the sysroot's /etc when adopt and it has one). Returns its path."""
    path = staging_path(system, deployment_id)
    base_root = system.layout.root_of(base) if base is not None else None
    if base_root is not None and kernel.is_subvolume(base_root):
        kernel.subvolume_snapshot(base_root, path, readonly=False)
    else:
        kernel.subvolume_create(path)
        sysetc = system.sysroot / "etc"
        if adopt and sysetc.is_dir() and not sysetc.is_symlink():
            run(["cp", "-a", "--reflink=auto", "--", os.fspath(sysetc), os.fspath(path / "etc")])
    _skeleton(path)
    if var_subvol is not None or base_root is None or not (path / "etc/fstab").is_file():
        write_fstab(path, device, var_subvol or system.layout.var_subvol_path)
    for unit in unmask_tmpfiles(path):
        log.warning("%s: unmasked %s: /var is made from tmpfiles.d at boot", path, unit)
    return path


def finish_root(system: System, path: Path, deployment_id: str) -> None:
    """Move a root built under staging/ into roots/. Not synced here: its /usr goes into
    place after it on the same filesystem, whose one sync (build._finish) then commits both
    before the state names the deployment. A btrfs commit holds every change made before
    it, so no crash leaves the /usr in place without its root."""
    os.rename(path, system.layout.root_of(deployment_id))


def unused_vars(system: System) -> list[Path]:
    """The /var subvolumes of resets (TOP/@rpmimg/var-<ID>) no root's fstab mounts any more."""
    named = set()
    roots = system.layout.roots
    for root in roots.iterdir() if roots.is_dir() else ():
        try:
            text = (root / "etc/fstab").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        named.update(_VAR_REF.findall(text))
    return [p for p in sorted(system.layout.root.glob("var-*")) if p.name not in named]


def discard(path: Path) -> None:
    if os.path.lexists(path):
        kernel.subvolume_delete(path)
