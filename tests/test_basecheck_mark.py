"""The base of an update is walked again only when its subvolume changed since it was built
or last checked (deploy.basecheck's intact mark), on real btrfs through the real CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

from deploytools import Images, deploy

from deploy import basecheck
from deploy.system import open_system
from host import kernel

pytest_plugins = ("deployenv",)


def _intact(sysroot: Path, deployment: str) -> bool:
    with open_system(sysroot) as system:
        return basecheck.intact(system, deployment)


def _mark(sysroot: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((sysroot / "@rpmimg" / basecheck.MARK_NAME).read_text())
    return data


def test_a_new_deployment_is_marked_and_any_change_undoes_the_mark(sysroot: Path, images: Images) -> None:
    first = str(deploy(sysroot, images.v1, images.key).json()["deployment"]["id"])  # type: ignore[index]
    assert _mark(sysroot)["deployment"] == first and _intact(sysroot, first)
    assert not _intact(sysroot, "99")  # another deployment's mark vouches for nothing
    tree = sysroot / "@rpmimg/deployments" / first
    kernel.subvolume_set_readonly(tree, False)
    assert not _intact(sysroot, first)  # writable: no longer vouched for
    kernel.subvolume_set_readonly(tree, True)
    assert _intact(sysroot, first)  # flag back, nothing changed inside
    # Content rewritten in place with size and mtime kept: nothing rpm -V's metadata sees.
    kernel.subvolume_set_readonly(tree, False)
    victim = tree / "lib/bulk/part-1"
    st = victim.stat()
    with open(victim, "r+b") as f:
        f.seek(4096)
        f.write(b"\0damaged\0")
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    kernel.subvolume_set_readonly(tree, True)
    assert not _intact(sysroot, first)  # the change is committed and counted at once
    second = deploy(sysroot, images.v2, images.key).json()
    assert second["build"] == "full" and "/usr/lib/bulk/part-1: digest" in "\n".join(
        second["base_damage"])  # type: ignore[arg-type]
    new = str(second["deployment"]["id"])  # type: ignore[index]
    assert _mark(sysroot)["deployment"] == new and _intact(sysroot, new)


def test_a_forged_or_broken_mark_means_the_walk(sysroot: Path, images: Images) -> None:
    first = str(deploy(sysroot, images.v1, images.key).json()["deployment"]["id"])  # type: ignore[index]
    path = sysroot / "@rpmimg" / basecheck.MARK_NAME
    mark = _mark(sysroot)
    numbers = mark["mark"]
    assert isinstance(numbers, list)
    path.write_text(json.dumps({"deployment": first, "mark": [numbers[0], numbers[1] - 1, numbers[2]]}))
    assert not _intact(sysroot, first)
    for junk in ("", "[]", "{", '{"deployment": "1", "mark": "x"}', "x" * 10000):
        path.write_text(junk)
        assert not _intact(sysroot, first)
    path.unlink()
    assert not _intact(sysroot, first)
    # The walk finds the base intact and marks it again; the update is built from it.
    second = deploy(sysroot, images.v2, images.key).json()
    assert second["build"] == "update" and second["base_damage"] == []


def test_an_intact_bases_header_files_are_named_by_its_record_and_a_changed_ones_are_not(
        sysroot: Path, images: Images) -> None:
    """A full build's /etc merge takes the digests of the old tree's header files from its
    deployment's record only while the intact mark vouches for the tree: then each named
    file's bytes hash to what the record says; once a header file is changed, nothing is named."""
    import hashlib

    from deploy import state
    from deploy.wholesystem import _header_names_if_intact

    first = str(deploy(sysroot, images.v1, images.key).json()["deployment"]["id"])  # type: ignore[index]
    record = state.load(sysroot / "@rpmimg/state.json").find(first)
    tree = sysroot / "@rpmimg/deployments" / first
    with open_system(sysroot) as system:
        names = _header_names_if_intact(system, record)
        assert _header_names_if_intact(system, None) is None
    assert names is not None and len(names) == len(record.packages)  # type: ignore[union-attr]
    for name, sha in names.items():
        assert hashlib.sha256((tree / "lib/sysimage/packages" / name).read_bytes()).hexdigest() == sha
    kernel.subvolume_set_readonly(tree, False)
    victim = tree / "lib/sysimage/packages" / sorted(names)[0]
    victim.write_bytes(victim.read_bytes()[:-1] + b"\1")
    kernel.subvolume_set_readonly(tree, True)
    with open_system(sysroot) as system:
        assert _header_names_if_intact(system, record) is None
