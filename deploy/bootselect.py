"""Boot selection: the kernel arguments that mount the default deployment as /usr.

`usr-default.conf` is derived from the state file's default and written after it, with
the state's serial, so a kill in between leaves the file naming the previous default and
an older serial. Every command that reads the state settles that (deploy.lifecycle.settle
for read-only ones, recover for the others): the file is rewritten from the state, unless
another rpmimg holds the lock or the state is older than the disk (a deployment it does
not name, or a file written from a higher serial: a state restored from a backup). Then
the file is the better witness, and `rpmimg state rebuild` reads it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from deploy import mounts
from deploy.layout import DIRNAME
from deploy.state import State
from deploy.system import System
from host import kernel
from host.files import write_atomically
from host.log import get as logger
from host.run import CommandError, run

log = logger(__name__)

_SERIAL = re.compile(r"^# state serial ([0-9]+)$", re.MULTILINE)
_SELECTED = re.compile(rf"mount\.usrflags=subvol=/{re.escape(DIRNAME)}/deployments/([0-9]+),ro\b")


def fs_uuid(system: System) -> str | None:
    """The btrfs filesystem UUID: the filesystem's own answer (blkid's cache can be stale for
    loop devices), else sysfs's directory that lists the device, else blkid's probe."""
    try:
        return kernel.filesystem_uuid(system.layout.top)
    except OSError as e:
        log.debug("%s: no filesystem UUID from btrfs: %s", system.layout.top, e)
    source = mounts.mount_of(system.layout.top).source
    device = os.path.basename(os.path.realpath(source))
    for devices in Path("/sys/fs/btrfs").glob("*/devices"):
        if (devices / device).exists():
            return devices.parent.name
    try:
        out = run(["blkid", "-p", "-o", "value", "-s", "UUID", source]).stdout.decode().strip()
    except CommandError as e:
        log.debug("no filesystem UUID for %s: %s", source, e)
        return None
    return out or None


def kernel_arguments(system: System, deployment_id: str) -> str:
    """The kernel command line that boots this deployment: its root subvolume as /, read-write,
    and its /usr subvolume, read-only (systemd's initrd mounts both)."""
    uuid = fs_uuid(system)
    device = f"UUID={uuid}" if uuid else mounts.mount_of(system.layout.top).source
    layout = system.layout
    usr = f"mount.usr={device} mount.usrflags=subvol={layout.subvol_path(deployment_id)},ro"
    if not os.path.isdir(layout.root_of(deployment_id)):
        return usr  # made before deployments had roots: it boots on the sysroot's own /
    return (
        f"root={device} rootflags=subvol={layout.root_subvol_path(deployment_id)} rw"
        f" mount.usr={device} mount.usrflags=subvol={layout.subvol_path(deployment_id)},ro"
    )


def _text(system: System) -> str:
    try:
        return system.layout.boot_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def selected(system: System) -> str | None:
    """The deployment id usr-default.conf selects, if it exists and names one."""
    found = _SELECTED.search(_text(system))
    return found.group(1) if found else None


def serial(system: System) -> int | None:
    """The serial of the state usr-default.conf was written from, if it says."""
    found = _SERIAL.search(_text(system))
    return int(found.group(1)) if found else None


def write(system: System, current: State) -> None:
    """Make usr-default.conf name the state's default (or remove it when there is none)."""
    from deploy import bootcheck

    bootcheck.apply(system, current)  # the boot entries, when there is an ESP
    path = system.layout.boot_file
    if current.default is None:
        path.unlink(missing_ok=True)
        return
    text = (
        "# Written by rpmimg: the kernel command line that boots the default deployment.\n"
        f"# state serial {current.serial}\n"
        f"{kernel_arguments(system, current.default)}\n"
    )
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except FileNotFoundError:
        pass
    write_atomically(path, text.encode())
