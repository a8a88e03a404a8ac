"""Shared test gating and fixtures.

Privileged tests are gated by probing the real capability: a btrfs filesystem is
created in a file and loop-mounted. Without it they skip with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SHARED_CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "rpm-testsuite"


@functools.cache
def btrfs_unavailable_reason() -> str | None:
    """Why a loop-mounted btrfs can't be used here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root to loop-mount btrfs"
    for tool in ("mkfs.btrfs", "losetup", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    try:
        with loop_btrfs(size=256 << 20):
            pass
    except (OSError, subprocess.CalledProcessError) as e:
        return f"cannot loop-mount a btrfs: {e}"
    return None


@contextlib.contextmanager
def loop_btrfs(size: int = 1 << 30, label: str = "rpmimg-test", options: str | None = None) -> Iterator[Path]:
    """A fresh btrfs in a sparse file, loop-mounted on a temporary directory."""
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rpmimg-btrfs-")))
        image = tmp / "fs.img"
        mnt = tmp / "mnt"
        mnt.mkdir()
        with open(image, "wb") as f:
            f.truncate(size)
        subprocess.run(
            ["mkfs.btrfs", "-q", "-L", label, os.fspath(image)],
            check=True, capture_output=True,
        )
        subprocess.run(
            ["mount", "-o", f"loop,{options}" if options else "loop", os.fspath(image), os.fspath(mnt)],
            check=True, capture_output=True, text=True,
        )
        stack.callback(
            subprocess.run, ["umount", "-l", os.fspath(mnt)], check=False, capture_output=True
        )
        yield mnt


@pytest.fixture
def btrfs() -> Iterator[Path]:
    """A mounted, empty 1 GiB btrfs; skips with the reason when unavailable."""
    reason = btrfs_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with loop_btrfs() as mnt:
        yield mnt


@pytest.fixture
def shared_corpus() -> Path:
    """rpm's own test packages from ../shared; skips when the directory is absent."""
    if not SHARED_CORPUS.is_dir():
        pytest.skip(f"external corpus not present at {SHARED_CORPUS}")
    return SHARED_CORPUS


def requires_root() -> pytest.MarkDecorator:
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


# The hostile-mirror tests' world (keys and packages, built once per module) and scene
# (a fresh repository, definition and output per test); see tests/hostile.py.
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from hostile import make_world

    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def scene(world: Any, tmp_path: Path) -> Any:
    from hostile import make_scene

    return make_scene(world, tmp_path)
