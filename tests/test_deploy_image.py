"""End to end: `rpmimg deploy` of published images into a real btrfs, checked against rpm -i."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from deploytools import CHANGED_BYTES, V1, V2, Images, deploy, rpmimg, state_of

from benchmarks.measure import btrfs_data_used
from fixtures import catalog
from host import kernel

from oracle import DEFAULT_EXCLUDE, assert_same_tree, rpm_install

pytest_plugins = ("deployenv",)


def _tree(sysroot: Path, deployment: str) -> Path:
    return sysroot / "@rpmimg/deployments" / deployment


def test_deploy_equals_rpm_install(sysroot: Path, images: Images, tmp_path: Path) -> None:
    result = deploy(sysroot, images.v1, images.key).json()
    assert result["outcome"] == "deployed"
    tree = _tree(sysroot, str(result["deployment"]["id"]))
    assert kernel.subvolume_is_readonly(tree)
    assert result["reflinked_files"] and not result["copied_files"]

    expected = tmp_path / "rpm-root"
    # rpm 4.18 cannot install "names" (its temporary name for a 254-byte file name is too
    # long); `rpmimg verify` below checks that package against its header instead.
    oracle_rpms = [p for p in images.v1_rpms if not p.name.startswith("names-")]
    rpm_install(oracle_rpms, expected, passwd=catalog.PASSWD, group=catalog.GROUP)
    # /usr of the deployment equals rpm's /usr ...
    assert_same_tree(
        expected / "usr", tree, exclude=("/lib/sysimage/packages", "/lib/sysimage/rpmimg", "/lib/sysimage/rpm", "/share/factory", "/share/names")
    )
    # ... and what rpm put outside /usr is under /usr/share/factory with its original path.
    outside = (*DEFAULT_EXCLUDE, "/usr", "/etc/passwd", "/etc/group")
    assert_same_tree(expected, tree / "share/factory", exclude=outside)
    assert "outside-usr-1.0-1.x86_64" in result["outside_usr"]  # type: ignore[operator]
    assert "/etc/outside-usr.conf" in result["outside_usr"]["outside-usr-1.0-1.x86_64"]  # type: ignore[index]

    # The header files are the package database: exactly the manifest's packages, rpm -qp reads each.
    manifest = json.loads(images.v1.read_text())
    want = sorted(f"{p['name']}-{p['version']}-{p['release']}.{p['arch']}.rpm" for p in manifest["packages"])
    headers = tree / "lib/sysimage/packages"
    assert sorted(os.listdir(headers)) == want
    q = subprocess.run(["rpm", "-qp", "--nosignature", "--qf", "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm\\n",
                        *sorted(headers.iterdir())], capture_output=True, text=True, check=True)
    assert q.stdout.split() == want

    verified = rpmimg("verify", "--sysroot", sysroot, "--json").json()
    assert verified["mismatches"] == [] and verified["files"] > 100  # type: ignore[operator]

    st = state_of(sysroot)
    assert st["default"] == result["deployment"]["id"]
    boot = (sysroot / "@rpmimg/usr-default.conf").read_text()
    assert f"mount.usrflags=subvol=/@rpmimg/deployments/{result['deployment']['id']},ro" in boot
    device = subprocess.run(["findmnt", "-no", "SOURCE", sysroot], capture_output=True, text=True,
                            check=True).stdout.strip()
    uuid = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", device], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert f"mount.usr=UUID={uuid} " in boot

    status = rpmimg("status", "--sysroot", sysroot, "--json").json()["deployments"]
    assert len(status) == 1  # type: ignore[arg-type]
    row = status[0]  # type: ignore[index]
    assert row["default"] and not row["booted"] and row["path"] == os.fspath(tree)
    assert row["packages"] == len(want) and row["version"] == V1
    assert row["exclusive_bytes"] < 1 << 20  # everything is shared with the store

    # Same version again: no change.
    again = deploy(sysroot, images.v1, images.key).json()
    assert again["outcome"] == "no change"
    assert state_of(sysroot) == st


def test_update_costs_only_changed_files_and_diffs(sysroot: Path, images: Images) -> None:
    first = deploy(sysroot, images.v1.parent, images.key).json()
    before = btrfs_data_used(sysroot)
    second = deploy(sysroot, images.output, images.key).json()  # "latest" is V2
    # What btrfs really allocated: the changed files, the new packages' headers and the
    # header files' last blocks; not the downloaded copy of an updated package's unchanged
    # 1 MiB file (deduplicating a download in place would leave its extent allocated).
    grown = btrfs_data_used(sysroot) - before
    assert (second["deployment"]["version"], second["fetched"], second["build"]) == (V2, 3, "update")
    tree1, tree2 = _tree(sysroot, str(first["deployment"]["id"])), _tree(sysroot, str(second["deployment"]["id"]))
    # The rpm database is updated in a reflinked copy of the previous one: only the pages
    # sqlite rewrote are new (a plain copy would make all of it new).
    db = tree2 / "lib/sysimage/rpm/rpmdb.sqlite"
    db_new = kernel.exclusive_bytes([db])
    assert db_new <= db.stat().st_size // 2, (db_new, db.stat().st_size)
    assert grown <= CHANGED_BYTES + db_new + 3 * 64 * 1024, (grown, CHANGED_BYTES, db_new)

    # Disk: the new deployment plus its new store entries cost at most the changed files'
    # data plus 1% of the image, by FIEMAP (shared extents don't count).
    manifest = json.loads(images.v2.read_text())
    image_bytes = sum(p["size"] for p in manifest["packages"])
    changed_data = CHANGED_BYTES
    store = sysroot / "@rpmimg/store"
    new_store = [store / p["sha256"][:2] / f"{p['sha256']}.rpm" for p in manifest["packages"]
                 if p["name"] in ("sizes", "payload-zstd", "newcomer")]
    used = kernel.exclusive_bytes([tree2, *new_store])
    assert used <= changed_data + image_bytes // 100, (used, changed_data, image_bytes)
    assert second["deduplicated_bytes"] > 1 << 20  # the unchanged files of "sizes"

    d = rpmimg("diff", "--sysroot", sysroot, "--json").json()
    changes = {(c["kind"], c["name"]): (c["old"], c["new"]) for c in d["changes"]}  # type: ignore[union-attr]
    assert changes == {
        ("upgraded", "sizes"): ("1.0-1", "1.1-1"),
        ("upgraded", "payload-zstd"): ("1.0-1", "2.0-1"),
        ("added", "newcomer"): (None, "1.0-1"),
        ("removed", "empty"): ("1.0-1", None),
    }
    # `diff` of the two header directories tells the same story.
    plain = subprocess.run(["diff", tree1 / "lib/sysimage/packages", tree2 / "lib/sysimage/packages"],
                           capture_output=True, text=True)
    only = sorted(line.split(": ", 1)[1] for line in plain.stdout.splitlines() if line.startswith("Only in"))
    assert only == sorted([
        "empty-1.0-1.x86_64.rpm", "newcomer-1.0-1.x86_64.rpm", "payload-zstd-1.0-1.x86_64.rpm",
        "payload-zstd-2.0-1.x86_64.rpm", "sizes-1.0-1.x86_64.rpm", "sizes-1.1-1.x86_64.rpm",
    ])

    # Rollback makes the first the default again; a second rollback has nowhere to go.
    rb = rpmimg("rollback", "--sysroot", sysroot, "--json").json()
    assert (rb["replaces"], rb["deployment"]) == (second["deployment"], first["deployment"])
    assert state_of(sysroot)["default"] == first["deployment"]["id"]
    assert f"deployments/{first['deployment']['id']}," in (sysroot / "@rpmimg/usr-default.conf").read_text()
    err = rpmimg("rollback", "--sysroot", sysroot, check=False)
    assert err.code == 1 and "nothing to roll back to" in err.err
    # Deploying the rolled-back V2 again is refused unless forced; then its deployment is
    # the default again, without rebuilding.
    refused = deploy(sysroot, images.v2, images.key, check=False)
    assert refused.code == 1 and "rolled back" in refused.err and "--force" in refused.err
    again = deploy(sysroot, images.v2, images.key, "--force").json()
    assert (again["outcome"], again["deployment"]["id"]) == ("reactivated", second["deployment"]["id"])



def test_deploy_with_a_binary_vendor_key_in_keys_d(sysroot: Path, images: Images) -> None:
    """keys.d may hold binary keys (`gpg --export`); the manifest and every package header verify."""
    keys = sysroot / "etc/rpmimg/keys.d"
    keys.mkdir(parents=True)
    binary = subprocess.run(["gpg", "--dearmor"], input=images.key.public.read_bytes(),
                            capture_output=True, check=True).stdout
    assert not binary.startswith(b"-----")
    (keys / "vendor.gpg").write_bytes(binary)
    result = rpmimg("deploy", "--sysroot", sysroot, "--json", images.v0).json()
    assert (result["outcome"], result["deployment"]["version"], result["fetched"]) == ("deployed", "20261121.1", 1)
    tree = _tree(sysroot, str(result["deployment"]["id"]))
    assert sorted(os.listdir(tree / "lib/sysimage/packages")) == ["empty-1.0-1.x86_64.rpm"]
    # The same key file refuses what it did not sign: a package without a header signature.
    refused = rpmimg("deploy", "--sysroot", sysroot, "--json", images.unsigned, check=False)
    assert refused.code == 1 and "not signed with a header signature" in refused.err, refused.err
