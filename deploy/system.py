"""An opened sysroot: its layout on the mounted top level, state, and boot selection file."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deploy import mounts, state
from deploy.errors import LayoutError
from deploy.layout import Layout
from deploy.state import State
from host import kernel
from host.files import write_atomically
from host.run import CommandError, run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class System:
    """A target system: where it is mounted and where rpmimg keeps its deployments."""

    sysroot: Path
    layout: Layout
    visible: bool  # whether layout.top is visible outside this process

    def load_state(self) -> State:
        return state.load(self.layout.state_file)

    def save_state(self, new: State) -> None:
        state.save(self.layout.state_file, new)

    def fs_uuid(self) -> str | None:
        """The btrfs filesystem UUID, from sysfs (blkid's cache can be stale for loop devices)."""
        source = mounts.mount_of(self.layout.top).source
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

    def kernel_arguments(self, deployment_id: str) -> str:
        """The arguments a boot entry uses to mount this deployment as /usr."""
        uuid = self.fs_uuid()
        device = f"UUID={uuid}" if uuid else mounts.mount_of(self.layout.top).source
        return (
            f"mount.usr={device} mount.usrflags=subvol={self.layout.subvol_path(deployment_id)},ro"
        )

    def write_boot_file(self, current: State) -> None:
        """Make usr-default.conf name the state's default (or remove it when there is none)."""
        path = self.layout.boot_file
        if current.default is None:
            path.unlink(missing_ok=True)
            return
        text = (
            "# Written by rpmimg: kernel arguments that mount the default deployment as /usr.\n"
            f"{self.kernel_arguments(current.default)}\n"
        )
        try:
            if path.read_text(encoding="utf-8") == text:
                return
        except FileNotFoundError:
            pass
        write_atomically(path, text.encode())

    def booted(self) -> str | None:
        """The id of the deployment mounted on the sysroot's /usr, if any."""
        usr = self.sysroot / "usr"
        try:
            m = mounts.mount_of(usr)
        except LayoutError:
            return None
        prefix = self.layout.subvol_path("")
        if os.path.realpath(usr) != os.fspath(m.mount_point) or not m.root.startswith(prefix):
            return None
        return m.root[len(prefix) :] or None


@contextlib.contextmanager
def open_system(sysroot: Path, *, private_namespace: bool = False) -> Iterator[System]:
    """Mount the top level if needed and yield the sysroot's System."""
    sysroot = Path(os.path.abspath(sysroot))
    try:
        if not kernel.is_btrfs(sysroot):
            raise LayoutError(f"{sysroot}: not on a btrfs filesystem")
    except FileNotFoundError as e:
        raise LayoutError(f"{sysroot}: no such directory") from e
    visible = mounts.visible_toplevel(sysroot) is not None
    with mounts.toplevel(sysroot, private_namespace=private_namespace) as top:
        layout = Layout(top=top, sysroot=sysroot)
        yield System(sysroot=sysroot, layout=layout, visible=visible)
