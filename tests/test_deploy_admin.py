"""verify (--repair), pin, cleanup, and a sysroot that is not the btrfs top level."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from deploytools import V0, V1, V2, Images, deploy, rpmimg, state_of

from host import kernel

pytest_plugins = ("deployenv",)


def _damage(tree: Path) -> None:
    kernel.subvolume_set_readonly(tree, False)
    try:
        data = tree / "share/sizes/size-4097"
        content = bytearray(data.read_bytes())
        content[100] ^= 0xFF
        data.write_bytes(bytes(content))
        os.utime(data, (1_600_004_097, 1_600_004_097))  # keep the mtime: only the digest differs
        (tree / "bin/payload-zstd").chmod(0o700)
        (tree / "share/factory/etc/outside-usr.conf").unlink()
    finally:
        kernel.subvolume_set_readonly(tree, True)


def test_verify_finds_damage_and_repair_fixes_it(sysroot: Path, images: Images) -> None:
    d = deploy(sysroot, images.v2, images.key).json()["deployment"]["id"]
    tree = sysroot / "@rpmimg/deployments" / str(d)
    _damage(tree)
    r = rpmimg("verify", "--sysroot", sysroot, "--json", check=False)
    assert r.code == 1
    found = {m["path"]: m["what"] for m in r.json()["mismatches"]}  # type: ignore[union-attr]
    assert found == {
        "/usr/share/sizes/size-4097": ["digest"],
        "/usr/bin/payload-zstd": ["mode"],
        "/etc/outside-usr.conf": ["missing"],
    }
    text = rpmimg("verify", "--sysroot", sysroot, check=False)
    assert text.code == 1 and "digest" in text.out and "/usr/share/sizes/size-4097" in text.out

    # A package the store no longer has is fetched again from the deployment's manifest.
    sizes = next(p for p in state_of(sysroot)["deployments"][0]["packages"]  # type: ignore[index]
                 if p["name"] == "sizes")
    (sysroot / "@rpmimg/store" / sizes["sha256"][:2] / f"{sizes['sha256']}.rpm").unlink()
    fixed = rpmimg("verify", "--sysroot", sysroot, "--repair", "--keyring", images.key.public,
                   "--json").json()
    assert fixed["mismatches"] == [] and sorted(fixed["repaired"]) == sorted(found)  # type: ignore[arg-type]
    assert (sysroot / "@rpmimg/store" / sizes["sha256"][:2] / f"{sizes['sha256']}.rpm").exists()
    assert kernel.subvolume_is_readonly(tree)
    assert rpmimg("verify", "--sysroot", sysroot).code == 0


def test_pin_and_cleanup(sysroot: Path, images: Images) -> None:
    ids = [str(deploy(sysroot, m, images.key).json()["deployment"]["id"]) for m in (images.v0, images.v1, images.v2)]
    store = sysroot / "@rpmimg/store"
    rpmimg("pin", "--sysroot", sysroot, ids[0])
    r = rpmimg("cleanup", "--sysroot", sysroot, "--keep", "1", "--json").json()
    assert [d["id"] for d in r["removed"]] == [ids[1]]  # v0 is pinned, v2 the default
    assert [d["id"] for d in state_of(sysroot)["deployments"]] == [ids[0], ids[2]]  # type: ignore[union-attr]
    assert not (sysroot / "@rpmimg/deployments" / ids[1]).exists()
    # The store keeps exactly what the kept deployments use.
    wanted = {p["sha256"] for d in state_of(sysroot)["deployments"] for p in d["packages"]}  # type: ignore[union-attr]
    assert {p.stem for p in store.glob("*/*.rpm")} == wanted

    rpmimg("pin", "--sysroot", sysroot, "--unpin", ids[0])
    rb = rpmimg("rollback", "--sysroot", sysroot, "--json").json()
    assert rb["deployment"]["id"] == ids[0]
    # The default is never removed, even when older than what --keep keeps.
    r = rpmimg("cleanup", "--sysroot", sysroot, "--keep", "1", "--json").json()
    assert r["removed"] == []
    status = rpmimg("status", "--sysroot", sysroot, "--json").json()["deployments"]
    flags = {row["id"]: (row["default"], row["pinned"], row["rolled_back"]) for row in status}  # type: ignore[union-attr]
    assert flags == {ids[0]: (True, False, False), ids[2]: (False, False, True)}
    bad = rpmimg("pin", "--sysroot", sysroot, "42", check=False)
    assert bad.code == 1 and "deployment '42' does not exist" in bad.err


def test_booted_deployment_is_detected_and_kept(sysroot: Path, images: Images) -> None:
    first = str(deploy(sysroot, images.v1, images.key).json()["deployment"]["id"])
    second = str(deploy(sysroot, images.v2, images.key).json()["deployment"]["id"])
    device = subprocess.run(["findmnt", "-no", "SOURCE", sysroot], capture_output=True, text=True,
                            check=True).stdout.strip()
    usr = sysroot / "usr"
    usr.mkdir()
    # Boot the first deployment the way a boot entry would: mount.usrflags=subvol=...,ro
    subprocess.run(["mount", "-o", f"ro,subvol=/@rpmimg/deployments/{first}", device, usr], check=True)
    try:
        rows = rpmimg("status", "--sysroot", sysroot, "--json").json()["deployments"]
        assert [(r["id"], r["booted"], r["default"]) for r in rows] == [  # type: ignore[union-attr]
            (first, True, False), (second, False, True)]
        assert (usr / "lib/sysimage/packages/sizes-1.0-1.x86_64.rpm").exists()
        # With a booted deployment, `diff` shows what the next boot changes.
        d = rpmimg("diff", "--sysroot", sysroot, "--json").json()
        assert (d["old"]["id"], d["new"]["id"]) == (first, second)
        # cleanup --keep 1 keeps the booted one.
        assert rpmimg("cleanup", "--sysroot", sysroot, "--keep", "1", "--json").json()[
            "removed"] == []
    finally:
        subprocess.run(["umount", usr], check=True)


def _mounts_of(device: str) -> list[str]:
    """This namespace's mounts of DEVICE (mount point and root), not everyone's: other tests
    and processes on the machine mount and unmount their own things meanwhile."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        source = fields[fields.index("-") + 2]
        if source == device:
            out.append(f"{fields[4]} {fields[3]}")
    return sorted(out)


def test_sysroot_below_the_top_level_is_reached_privately(sysroot: Path, images: Images, tmp_path: Path) -> None:
    """MicroOS-like: / is a subvolume; rpmimg mounts the top level in its own namespace."""
    device = subprocess.run(["findmnt", "-no", "SOURCE", sysroot], capture_output=True, text=True,
                            check=True).stdout.strip()
    kernel.subvolume_create(sysroot / "@root")
    for name in ("passwd", "group"):
        (sysroot / "@root/etc").mkdir(exist_ok=True)
        (sysroot / "@root/etc" / name).write_text((sysroot / "etc" / name).read_text())
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["mount", "-o", "subvol=/@root", device, root], check=True)
    subprocess.run(["umount", sysroot], check=True)  # the top level is mounted nowhere now
    try:
        mounts_before = _mounts_of(device)
        r = deploy(root, images.v0, images.key).json()
        assert r["outcome"] == "deployed"
        assert f"subvol=/@rpmimg/deployments/{r['deployment']['id']},ro" in str(r["kernel_arguments"])
        # The private mount did not leak into this namespace, and nothing landed in the root.
        assert _mounts_of(device) == mounts_before
        assert not (root / "@rpmimg").exists()
        rows = rpmimg("status", "--sysroot", root, "--json").json()["deployments"]
        assert [(row["version"], row["path"], row["subvol"]) for row in rows] == [  # type: ignore[union-attr]
            (V0, None, f"/@rpmimg/deployments/{r['deployment']['id']}")]
        assert deploy(root, images.v1, images.key).json()["deployment"]["version"] == V1
    finally:
        # Top level first: unmounting the last user of the loop device would free it.
        subprocess.run(["mount", "-o", "subvolid=5", device, sysroot], check=True)
        subprocess.run(["umount", root], check=True)
    state = json.loads((sysroot / "@rpmimg/state.json").read_text())
    assert [d["version"] for d in state["deployments"]] == [V0, V1]
    assert V2 not in state["newest"].values()


def test_digest_checks_in_worker_processes_keep_their_order(tmp_path: Path) -> None:
    import hashlib

    from deploy.hashing import DigestJob, Hashing

    jobs, expected = [], []
    for i in range(40):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(1000 + i))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        wrong = i % 7 == 3
        jobs.append(DigestJob(os.fspath(tmp_path), path.name, "sha256", "0" * 64 if wrong else digest, 1000 + i))
        expected.append(wrong)
    jobs.append(DigestJob(os.fspath(tmp_path), "gone", "sha256", "0" * 64, 1))  # unreadable: differs
    expected.append(True)
    # A symlink to the right content is not followed: it differs as well.
    (tmp_path / "link").symlink_to(tmp_path / "f0")
    jobs.append(DigestJob(os.fspath(tmp_path), "link", "sha256", jobs[0].expected, 1000))
    expected.append(True)
    seen: list[tuple[int, int]] = []
    # Batches of one job or so: every batch but the last runs in a worker process.
    with Hashing(batch_bytes=2000) as hashing:
        for job in jobs:
            hashing.add(job)
        assert hashing.results(lambda done, total: seen.append((done, total))) == expected
    assert seen[-1] == (len(jobs), len(jobs))
    assert len(seen) > 10 or os.cpu_count() == 1  # progress moves batch by batch


def test_small_files_waiting_for_the_pool_are_handed_over_in_order(tmp_path: Path) -> None:
    """Small files are hashed here until two batches' worth wait; those go to the workers
    cut into batches of BATCH_FILES, and every result still comes back in job order."""
    import hashlib

    from deploy.hashing import BATCH_FILES, DigestJob, Hashing

    jobs, expected = [], []
    for i in range(3 * BATCH_FILES + 5):
        data = i.to_bytes(4, "big")
        (tmp_path / f"f{i}").write_bytes(data)
        wrong = i % 1000 == 999 or i in (BATCH_FILES - 1, BATCH_FILES, 2 * BATCH_FILES)
        digest = "0" * 64 if wrong else hashlib.sha256(data).hexdigest()
        jobs.append(DigestJob(os.fspath(tmp_path), f"f{i}", "sha256", digest, 4))
        expected.append(wrong)
    with Hashing() as hashing:
        taken: list[bool] = []
        for job in jobs:
            hashing.add(job)
            taken += hashing.take_ready()
        assert taken + hashing.results(None) == expected
