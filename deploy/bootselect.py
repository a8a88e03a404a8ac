"""Boot selection: the kernel arguments that mount the default deployment as /usr.

`usr-default.conf` is derived from the state file's default and written after it, so a
kill in between leaves the file naming the previous default. Every command that reads the
state settles that (deploy.lifecycle.settle): the file is rewritten from the state,
unless another rpmimg holds the lock or the state does not explain the deployments on
disk (then the file is the better witness, and `rpmimg state rebuild` reads it).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from deploy import mounts, state
from deploy.errors import CommandError
from deploy.layout import DIRNAME
from deploy.run import run
from deploy.state import State
from deploy.system import System

log = logging.getLogger(__name__)

_SELECTED = re.compile(rf"mount\.usrflags=subvol=/{re.escape(DIRNAME)}/deployments/([0-9]+),ro\b")


def fs_uuid(system: System) -> str | None:
    """The btrfs filesystem UUID, from sysfs (blkid's cache can be stale for loop devices)."""
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
    """The arguments a boot entry uses to mount this deployment as /usr."""
    uuid = fs_uuid(system)
    device = f"UUID={uuid}" if uuid else mounts.mount_of(system.layout.top).source
    return f"mount.usr={device} mount.usrflags=subvol={system.layout.subvol_path(deployment_id)},ro"


def selected(system: System) -> str | None:
    """The deployment id usr-default.conf selects, if it exists and names one."""
    try:
        text = system.layout.boot_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    found = _SELECTED.search(text)
    return found.group(1) if found else None


def write(system: System, current: State) -> None:
    """Make usr-default.conf name the state's default (or remove it when there is none)."""
    path = system.layout.boot_file
    if current.default is None:
        path.unlink(missing_ok=True)
        return
    text = (
        "# Written by rpmimg: kernel arguments that mount the default deployment as /usr.\n"
        f"{kernel_arguments(system, current.default)}\n"
    )
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except FileNotFoundError:
        pass
    state.write_atomically(path, text.encode())
