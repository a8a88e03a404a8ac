"""Exclusive sizes of deployments: as `btrfs filesystem du` counts them, cached, and measured
again when a deployment, a repair or the store changes them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from deploytools import Images, deploy

from deploy import sizes
from deploy.system import open_system
from host import kernel

pytest_plugins = ("deployenv",)


def btrfs_du_exclusive(path: Path) -> int:
    """The Exclusive column of `btrfs filesystem du -s --raw PATH`."""
    subprocess.run(["sync", "-f", os.fspath(path)], check=True)
    out = subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", os.fspath(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.splitlines()[-1].split()[1])


def _within(ours: int, du: int) -> bool:
    """Within 1% of btrfs du (or a block, for sizes near zero)."""
    return abs(ours - du) <= max(du // 100, 4096)


def _measured(sysroot: Path) -> dict[str, int]:
    with open_system(sysroot) as system:
        return sizes.exclusive_sizes(system)


def _no_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(paths: object) -> int:
        raise AssertionError("measured again although nothing changed")
    monkeypatch.setattr(kernel, "exclusive_bytes", refuse)


def test_sizes_match_btrfs_du_and_follow_changes(sysroot: Path, images: Images,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    first = str(deploy(sysroot, images.v1, images.key).json()["deployment"]["id"])  # type: ignore[index]
    second = str(deploy(sysroot, images.v2, images.key).json()["deployment"]["id"])  # type: ignore[index]
    deployments = sysroot / "@rpmimg/deployments"
    found = _measured(sysroot)
    assert set(found) == {first, second}
    for d, size in found.items():
        assert _within(size, btrfs_du_exclusive(deployments / d)), (d, size)

    # Nothing changed: the cached sizes, without walking a file.
    with monkeypatch.context() as m:
        _no_measuring(m)
        assert _measured(sysroot) == found

    # The store lets go of the data (as cleanup does): what only one deployment still
    # holds (the files v2 changed, v1's old versions of them) is now exclusive to it.
    store = sysroot / "@rpmimg/store"
    for entry in sorted(store.glob("*/*.rpm")):
        entry.unlink()
    after = _measured(sysroot)
    assert after[first] > found[first] and after[second] > found[second]
    for d, size in after.items():
        assert _within(size, btrfs_du_exclusive(deployments / d)), (d, size)

    # A repair writes into a deployment: its generation moves, the sizes are measured again.
    tree = deployments / second
    kernel.subvolume_set_readonly(tree, False)
    (tree / "own-data").write_bytes(os.urandom(3 << 20))
    kernel.subvolume_set_readonly(tree, True)
    kernel.sync_filesystem(tree)
    repaired = _measured(sysroot)
    assert repaired[second] >= after[second] + (3 << 20)
    assert _within(repaired[second], btrfs_du_exclusive(tree))


def test_a_damaged_cache_is_measured_again(sysroot: Path, images: Images) -> None:
    deployment = str(deploy(sysroot, images.v1, images.key).json()["deployment"]["id"])  # type: ignore[index]
    good = _measured(sysroot)
    cache = sysroot / "@rpmimg" / sizes.CACHE_NAME
    for junk in (b"{", b'{"key": 1, "sizes": []}', b"\xff" * 10, b"[]"):
        cache.write_bytes(junk)
        assert _measured(sysroot) == good
    with cache.open("w") as f:  # the right key, lying sizes: refused value by value
        f.write(f'{{"key": "x", "sizes": {{"{deployment}": -5}}}}')
    assert _measured(sysroot) == good
