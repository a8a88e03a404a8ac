"""Boot assessment on the client: health checks, failed deployments, each one's boot state.

systemd-boot counts a new default's tries; `rpmimg-health.service` (required by
boot-complete.target) runs the health checks, and on failure marks the entry bad and
reboots. On the next boot into an older deployment, `rpmimg boot-check` finds the abandoned
default (its entry has no tries left) and records it as failed: the state's default
becomes the booted deployment, the failed one is kept for inspection (last in the boot
menu) until cleanup, and deploy does not make it the default again without --force.

    TOP/@rpmimg/boot/failed.json        {"<ID>": "reason"}
    TOP/@rpmimg/boot/health-<ID>.txt    what the last failed health check of ID said
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from deploy import bootentries, bootfiles
from deploy.errors import DeployError
from deploy.state import State
from deploy.system import System
from host.files import read_limited, write_atomically
from host.log import get as logger
from host.run import CommandError, run

log = logger(__name__)

HEALTH_DIRS = ("usr/lib/rpmimg/health.d", "etc/rpmimg/health.d")
# openSUSE health-checker's plugins, run with "check" as it does.
HEALTH_CHECKER_PLUGINS = "usr/libexec/health-checker"
HEALTH_TIMEOUT = 300.0


def _failed_file(system: System) -> Path:
    return bootfiles.boot_dir(system) / "failed.json"


def failed(system: System) -> dict[str, str]:
    """Deployments recorded as failed to boot, with the reason known."""
    try:
        data = json.loads(read_limited(_failed_file(system), 1 << 20))
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise DeployError(f"{_failed_file(system)}: not a failure record: {e}") from e
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _save_failed(system: System, records: dict[str, str]) -> None:
    bootfiles.boot_dir(system).mkdir(parents=True, exist_ok=True)
    write_atomically(_failed_file(system), json.dumps(records, indent=1, sort_keys=True).encode())


def apply(system: System, current: State) -> None:
    """Make the ESP's entries match the state (nothing without an ESP)."""
    if system.esp is None:
        return
    known = {d.id for d in current.deployments}
    bootentries.sync(system.esp, system, current,
                     count_tries=bootentries.tries(system, system.tries),
                     failed=[i for i in failed(system) if i in known])


def forget(system: System, keep: set[str]) -> None:
    """After cleanup: drop boot records, files and failure notes of removed deployments."""
    bootfiles.prune(system, keep)
    records = failed(system)
    if any(i not in keep for i in records):
        _save_failed(system, {i: r for i, r in records.items() if i in keep})
    for note in bootfiles.boot_dir(system).glob("health-*.txt"):
        if note.stem.removeprefix("health-") not in keep:
            note.unlink()


def reactivated(system: System, deployment_id: str) -> None:
    """An existing deployment becomes the default again (deploy.intent refused it first if it
    failed to boot and --force was not given): a fresh boot counter, its failure forgotten."""
    why = failed(system).get(deployment_id)
    if system.esp is not None:
        bootentries.recount(system.esp, deployment_id, bootentries.tries(system, system.tries))
    if why is not None:
        records = failed(system)
        records.pop(deployment_id)
        _save_failed(system, records)


@dataclass(frozen=True)
class Abandoned:
    """A deployment the boot check gave up on, and why."""

    deployment: str
    reason: str


def record_abandoned(system: System, current: State) -> tuple[State, Abandoned | None]:
    """At boot: when the state's default is not what booted and its entries have no tries
    left, record it as failed and make the booted deployment the default again."""
    booted = system.booted()
    default = current.default
    if booted is None or default is None or booted == default or current.find(booted) is None:
        return current, None
    entries = bootentries.states(system.esp).get(default, [])
    if not entries or any(e.left != 0 for e in entries):
        return current, None  # not tried out (a deploy awaiting reboot, or blessed)
    note = bootfiles.boot_dir(system) / f"health-{default}.txt"
    try:
        reason = "health check failed: " + note.read_text(errors="replace").strip()[:400]
    except FileNotFoundError:
        tries = max(e.done for e in entries)
        reason = f"did not reach boot-complete.target in {tries} tries"
    records = failed(system)
    records[default] = reason
    _save_failed(system, records)
    new = dataclasses.replace(
        current, default=booted, bad=(*[b for b in current.bad if b != default], default)
    )
    return system.save_state(new), Abandoned(default, reason)


def _executables(root: Path) -> list[Path]:
    found = {}
    for d in HEALTH_DIRS:
        for p in sorted((root / d).glob("*")) if (root / d).is_dir() else []:
            st = os.stat(p)
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                found[p.name] = p  # /etc overrides /usr by name
    return [found[n] for n in sorted(found)]


def run_health_checks(root: Path) -> list[str]:
    """Run every health check; the failures, one line each (empty: healthy)."""
    failures = []
    plugins = root / HEALTH_CHECKER_PLUGINS
    checks = [[os.fspath(p)] for p in _executables(root)]
    if plugins.is_dir():
        checks += [[os.fspath(p), "check"] for p in sorted(plugins.glob("*.sh"))]
    for argv in checks:
        try:
            run(argv, timeout=HEALTH_TIMEOUT)
        except CommandError as e:
            failures.append(f"{os.path.basename(argv[0])}: {e}")
    return failures


def note_health_failure(system: System, failures: list[str]) -> None:
    booted = system.booted()
    if booted is None or not failures:
        return
    bootfiles.boot_dir(system).mkdir(parents=True, exist_ok=True)
    write_atomically(bootfiles.boot_dir(system) / f"health-{booted}.txt",
                     ("; ".join(failures) + "\n").encode())
