"""An opened sysroot: its layout on the mounted top level and its state."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deploy import mounts, state
from deploy.errors import LayoutError
from deploy.esp import Esp
from deploy.layout import Layout
from deploy.state import State
from host import kernel


@dataclass(frozen=True)
class System:
    """A target system: where it is mounted and where rpmimg keeps its deployments."""

    sysroot: Path
    layout: Layout
    visible: bool  # whether layout.top is visible outside this process
    # Where boot entries go (None: none are written) and the tries of a new default's entry.
    esp: Esp | None = None
    tries: int | None = None

    def load_state(self) -> State:
        return state.load(self.layout.state_file)

    def save_state(self, new: State) -> State:
        """Save new atomically with its serial raised by one; returns what was saved."""
        saved = dataclasses.replace(new, serial=new.serial + 1)
        state.save(self.layout.state_file, saved)
        return saved

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

    def mounted(self) -> set[str]:
        """Ids of the deployments mounted anywhere this process can see (booted included)."""
        top = mounts.mount_of(self.layout.top)
        prefix = self.layout.subvol_path("")
        found = set()
        for m in mounts.current_mounts():
            if m.source == top.source and m.root.startswith(prefix):
                found.add(m.root[len(prefix) :].split("/", 1)[0])
        found.discard("")
        return found


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
