"""The admin's intent kept, and damage not inherited: through the real CLI on real btrfs."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from deploytools import V0, V1, V2, Images, deploy, rpmimg, state_of
from imagepub import publish

from host import kernel

pytest_plugins = ("deployenv",)


def _tree(sysroot: Path, deployment: object) -> Path:
    return sysroot / "@rpmimg/deployments" / str(deployment)


def test_another_image_needs_switch(sysroot: Path, images: Images, tmp_path: Path) -> None:
    first = deploy(sysroot, images.v1, images.key).json()["deployment"]
    other = publish(tmp_path / "out", "newbie", "1.0", [images.v1_rpms[0]], images.key)
    before = state_of(sysroot)
    refused = deploy(sysroot, other, images.key, check=False)
    assert refused.code == 1
    assert refused.json()["error"]["kind"] == "intent"
    assert "another image" in refused.err and "rpmimg switch" in refused.err
    assert state_of(sysroot) == before  # nothing recorded, nothing built
    assert sorted(os.listdir(sysroot / "@rpmimg/deployments")) == [first["id"]]  # type: ignore[index]

    switched = rpmimg("switch", "--sysroot", sysroot, "--keyring", images.key.public, "--json",
                      other).json()
    assert switched["deployment"]["image"] == "newbie"  # type: ignore[index]
    assert switched["replaces"] == first  # the report names what it replaces
    # Back to demo: again a switch, this time with the flag on deploy.
    back = deploy(sysroot, images.v2, images.key, "--switch").json()
    assert back["replaces"] == switched["deployment"]


def test_rolled_back_version_needs_force(sysroot: Path, images: Images) -> None:
    first = deploy(sysroot, images.v1, images.key).json()["deployment"]
    text = rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public, images.v2)
    assert f"replacing demo {V1} (deployment {first['id']})" in text.out  # type: ignore[index]
    rpmimg("rollback", "--sysroot", sysroot)
    before = state_of(sysroot)
    again = deploy(sysroot, images.v2, images.key, check=False)
    assert again.code == 1 and "rolled back" in again.err and "--force" in again.err
    assert state_of(sysroot) == before
    forced = deploy(sysroot, images.v2, images.key, "--force").json()
    assert forced["outcome"] == "reactivated" and forced["replaces"] == first


def test_rollback_to_a_named_deployment(sysroot: Path, images: Images) -> None:
    ids = [deploy(sysroot, m, images.key).json()["deployment"]["id"]  # type: ignore[index]
           for m in (images.v0, images.v1, images.v2)]
    rb = rpmimg("rollback", "--sysroot", sysroot, "--json", ids[0]).json()
    assert rb["deployment"] == {"id": ids[0], "image": "demo", "version": V0}
    assert rb["replaces"] == {"id": ids[2], "image": "demo", "version": V2}
    assert state_of(sysroot)["default"] == ids[0]
    assert ids[2] in state_of(sysroot)["bad"]  # type: ignore[operator]
    same = rpmimg("rollback", "--sysroot", sysroot, ids[0], check=False)
    assert same.code == 1 and "already the default" in same.err
    unknown = rpmimg("rollback", "--sysroot", sysroot, "9", check=False)
    assert unknown.code == 1 and "'9' does not exist" in unknown.err


def _damage_kept_files(tree: Path) -> tuple[str, str]:
    """Remove one file of an unchanged package and rewrite another's content in place,
    keeping its size and mtime: only its content (and its extents) change."""
    kernel.subvolume_set_readonly(tree, False)
    try:
        gone, rewritten = tree / "lib/bulk/part-0", tree / "lib/bulk/part-1"
        gone.unlink()
        st = rewritten.stat()
        with open(rewritten, "r+b") as f:
            f.seek(4096)
            f.write(b"\0damaged\0")
        os.utime(rewritten, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        kernel.subvolume_set_readonly(tree, True)
    return "/usr/lib/bulk/part-0", "/usr/lib/bulk/part-1"


def test_a_damaged_base_is_not_inherited(sysroot: Path, images: Images, tmp_path: Path) -> None:
    first = deploy(sysroot, images.v1, images.key).json()["deployment"]["id"]  # type: ignore[index]
    gone, rewritten = _damage_kept_files(_tree(sysroot, first))
    second = deploy(sysroot, images.v2, images.key).json()
    assert second["build"] == "full"
    assert f"deployment {first} is damaged" in str(second["full_reason"])
    damage = "\n".join(second["base_damage"])  # type: ignore[arg-type]
    assert f"{gone}: missing" in damage and f"{rewritten}: digest" in damage
    new = second["deployment"]["id"]  # type: ignore[index]
    assert rpmimg("verify", "--sysroot", sysroot, new).code == 0
    assert (_tree(sysroot, new) / "lib/bulk/part-0").is_file()
    # The text report says it too.
    kernel.subvolume_set_readonly(_tree(sysroot, new), False)
    (_tree(sysroot, new) / "lib/bulk/part-3").unlink()
    kernel.subvolume_set_readonly(_tree(sysroot, new), True)
    third = publish(tmp_path / "out", "demo", "20261130.1", images.v2_rpms, images.key)
    text = rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public, third)
    assert f"built in full: deployment {new} is damaged (1 file differs" in text.out


def test_an_intact_base_is_updated_without_reading_its_content(sysroot: Path, images: Images) -> None:
    deploy(sysroot, images.v1, images.key)
    second = deploy(sysroot, images.v2, images.key).json()
    assert second["build"] == "update" and second["base_damage"] == []


def test_verify_takes_a_ghost_made_in_the_tree_as_owned(sysroot: Path, images: Images,
                                                        tmp_path: Path) -> None:
    """A %ghost file is not extracted, but the package owns it: made in the tree later (as
    the admin may), it is no unowned file. Its content is not checked (rpm -V neither)."""
    from fixtures.build import fixture_packages

    ghosts = publish(tmp_path / "out", "ghosts", "1", [fixture_packages()["ghost-config"]], images.key)
    d = deploy(sysroot, ghosts, images.key, "--allow-unsigned-packages").json()["deployment"]["id"]  # type: ignore[index]
    tree = _tree(sysroot, d)
    kernel.subvolume_set_readonly(tree, False)
    assert not (tree / "share/ghost-config/ghost-file").exists()
    (tree / "share/ghost-config/ghost-file").write_bytes(b"made at run time\n")
    (tree / "share/ghost-config/stray").write_bytes(b"x")
    r = rpmimg("verify", "--sysroot", sysroot, "--json", check=False)
    found = {m["path"]: m["what"] for m in r.json()["mismatches"]}  # type: ignore[union-attr]
    assert found == {"/usr": ["writable"], "/usr/share/ghost-config/stray": ["unowned"]}


def test_verify_sees_unowned_files_and_a_writable_deployment(sysroot: Path, images: Images) -> None:
    d = deploy(sysroot, images.v1, images.key).json()["deployment"]["id"]  # type: ignore[index]
    tree = _tree(sysroot, d)
    kernel.subvolume_set_readonly(tree, False)
    evil = tree / "bin/evil"
    evil.write_bytes(b"#!/bin/sh\nexec /bin/sh\n")
    evil.chmod(0o4755)
    (tree / "share/stash/deeper").mkdir(parents=True)
    (tree / "share/stash/deeper/loot").write_bytes(b"x")
    r = rpmimg("verify", "--sysroot", sysroot, "--json", check=False)
    assert r.code == 1
    found = {m["path"]: m["what"] for m in r.json()["mismatches"]}  # type: ignore[union-attr]
    assert found == {"/usr": ["writable"], "/usr/bin/evil": ["unowned"], "/usr/share/stash": ["unowned"]}
    text = rpmimg("verify", "--sysroot", sysroot, check=False).out
    assert "3 mismatches" in text and "unowned" in text and "/usr/bin/evil" in text

    fixed = rpmimg("verify", "--sysroot", sysroot, "--repair", "--json").json()
    assert fixed["mismatches"] == []
    assert not os.path.lexists(evil) and not os.path.lexists(tree / "share/stash")
    assert kernel.subvolume_is_readonly(tree)
    assert rpmimg("verify", "--sysroot", sysroot).code == 0
    assert stat.S_ISDIR(os.lstat(tree / "share").st_mode)  # owned neighbours stay


def _drop_from_store(sysroot: Path, name: str) -> None:
    for d in state_of(sysroot)["deployments"]:  # type: ignore[union-attr]
        for p in d["packages"]:
            if p["name"] == name:
                (sysroot / "@rpmimg/store" / p["sha256"][:2] / f"{p['sha256']}.rpm").unlink(missing_ok=True)


def test_repair_refetches_from_the_versioned_url(sysroot: Path, images: Images, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(images.output, mirror, symlinks=True)
    deploy(sysroot, mirror, images.key)  # the image directory's latest: V2
    record = state_of(sysroot)["deployments"][0]  # type: ignore[index]
    assert record["source"] == os.fspath(mirror / f"images/demo/{V2}/manifest.json")
    # latest moves on; the deployment's files and store entry are lost.
    (mirror / "images/demo/latest").unlink()
    (mirror / "images/demo/latest").symlink_to(V1)
    tree = _tree(sysroot, record["id"])
    kernel.subvolume_set_readonly(tree, False)
    (tree / "share/newcomer/file").unlink()
    kernel.subvolume_set_readonly(tree, True)
    _drop_from_store(sysroot, "newcomer")
    fixed = rpmimg("verify", "--sysroot", sysroot, "--repair", "--keyring", images.key.public,
                   "--json").json()
    assert fixed["mismatches"] == [] and fixed["repaired"] == ["/usr/share/newcomer/file"]


def test_repair_keeps_the_trust_terms_of_the_deploy(sysroot: Path, images: Images) -> None:
    deploy(sysroot, images.unsigned, images.key, "--allow-unsigned-packages")
    record = state_of(sysroot)["deployments"][0]  # type: ignore[index]
    assert record["allow_unsigned_packages"] is True
    tree = _tree(sysroot, record["id"])
    victim = next(p for p in tree.rglob("*") if p.is_file() and "sysimage" not in p.parts)
    kernel.subvolume_set_readonly(tree, False)
    victim.unlink()
    kernel.subvolume_set_readonly(tree, True)
    _drop_from_store(sysroot, "epoch")
    fixed = rpmimg("verify", "--sysroot", sysroot, "--repair", "--keyring", images.key.public,
                   "--json").json()
    assert fixed["mismatches"] == [] and len(fixed["repaired"]) == 1  # type: ignore[arg-type]
