"""Hostile state, store and manifests: a lost, truncated or older state file never deletes a
booted, mounted or default deployment; verify is anchored to what was signed; a damaged
store entry is refetched, not reused; an old signed manifest can't roll a machine back;
every refusal is one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from deploytools import V0, V1, V2, Images, Result, deploy, rpmimg, state_of
from hostile import flip_byte
from imagepub import publish, sign_file
from servers import http_server

from fixtures import catalog
from fixtures.build import build_package
from fixtures.spec import FileSpec, Fill
from host import kernel
from host.digest import sha256_file
from rpmextents import ExtentsPackage

from conftest import btrfs_unavailable_reason, loop_btrfs
from oracle import seed_accounts

pytest_plugins = ("deployenv",)

STATE = "@rpmimg/state.json"
SIZES_FILE = "share/sizes/size-4097"


def _one_line_error(r: Result, *needles: str) -> None:
    """A refusal: exit 1, exactly one stderr line, naming what it should, no traceback."""
    assert r.code == 1, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rpmimg: error: "), r.err
    assert "Traceback" not in r.err and "internal error" not in r.err
    for needle in needles:
        assert needle in r.err, (needle, r.err)


def _subvolumes(sysroot: Path) -> dict[str, int]:
    """Deployment subvolumes on disk, by id, with their subvolume ids."""
    root = sysroot / "@rpmimg/deployments"
    return {p.name: kernel.subvolume_id(p) for p in sorted(root.iterdir())}


def _device(sysroot: Path) -> str:
    return subprocess.run(["findmnt", "-no", "SOURCE", sysroot], capture_output=True, text=True,
                          check=True).stdout.strip()


@contextlib.contextmanager
def _booted(sysroot: Path, deployment: str) -> Iterator[Path]:
    """Mount a deployment on SYSROOT/usr read-only, as a boot entry would."""
    usr = sysroot / "usr"
    usr.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", f"ro,subvol=/@rpmimg/deployments/{deployment}",
                    _device(sysroot), usr], check=True)
    try:
        yield usr
    finally:
        subprocess.run(["umount", usr], check=True)


def _ids(sysroot: Path, *manifests: Path, key: Any) -> list[str]:
    return [str(deploy(sysroot, m, key).json()["deployment"]["id"]) for m in manifests]


# --- the state file lost, damaged or older ---------------------------------------------------

def test_cleanup_without_state_refuses_and_rebuild_restores_it(sysroot: Path, images: Images) -> None:
    ids = _ids(sysroot, images.v0, images.v1, images.v2, key=images.key)
    lost = state_of(sysroot)
    on_disk = _subvolumes(sysroot)
    (sysroot / STATE).unlink()

    for verb in (["cleanup", "--keep", "1"], ["pin", ids[0]], ["rollback"]):
        _one_line_error(rpmimg(*verb, "--sysroot", sysroot, check=False),
                        "state.json", "rpmimg state rebuild", "nothing was deleted")
        assert _subvolumes(sysroot) == on_disk
    # A read-only command still works, and warns.
    status = rpmimg("status", "--sysroot", sysroot, "--json", "--no-size")
    assert status.json()["deployments"] == [] and "state rebuild" in status.err

    rebuilt = rpmimg("state", "rebuild", "--sysroot", sysroot, "--json").json()
    assert [d["id"] for d in rebuilt["deployments"]] == ids  # type: ignore[union-attr]
    assert (rebuilt["default"]["id"], rebuilt["skipped"]) == (ids[2], [])  # type: ignore[index]
    assert state_of(sysroot) == lost
    assert rpmimg("verify", "--sysroot", sysroot).code == 0


def test_older_state_never_deletes_the_booted_usr(sysroot: Path, images: Images) -> None:
    first = _ids(sysroot, images.v1, key=images.key)[0]
    rpmimg("pin", "--sysroot", sysroot, first)
    older = (sysroot / STATE).read_text()
    second = _ids(sysroot, images.v2, key=images.key)[0]
    with _booted(sysroot, second) as usr:
        header = usr / "lib/sysimage/packages/newcomer-1.0-1.x86_64.rpm"
        assert header.exists()
        (sysroot / STATE).write_text(older)  # restored from an old backup
        on_disk = _subvolumes(sysroot)
        for verb in (["pin", first], ["cleanup", "--keep", "1"], ["rollback"]):
            _one_line_error(rpmimg(*verb, "--sysroot", sysroot, check=False),
                            f"deployment {second} not in it", "rpmimg state rebuild")
            assert _subvolumes(sysroot) == on_disk and header.exists()
        assert (sysroot / STATE).read_text() == older
        rpmimg("state", "rebuild", "--sysroot", sysroot)
        st = state_of(sysroot)
        assert [d["id"] for d in st["deployments"]] == [first, second]  # type: ignore[union-attr]
        assert st["default"] == second
        # The pin comes back from the old file, which still parses.
        assert [d["pinned"] for d in st["deployments"]] == [True, False]  # type: ignore[union-attr]
        removed = rpmimg("cleanup", "--sysroot", sysroot, "--keep", "1", "--json").json()
        assert removed["removed"] == []  # one pinned, one booted and default
        assert header.exists()


def test_older_state_naming_every_deployment_is_still_recognised(sysroot: Path, images: Images) -> None:
    first, second = _ids(sysroot, images.v1, images.v2, key=images.key)
    older = (sysroot / STATE).read_text()  # default: the second
    rpmimg("rollback", "--sysroot", sysroot)
    boot = (sysroot / "@rpmimg/usr-default.conf").read_text()
    assert f"/deployments/{first}," in boot
    (sysroot / STATE).write_text(older)
    # Saving it back, or rewriting the boot selection from it, would undo the rollback.
    _one_line_error(rpmimg("pin", "--sysroot", sysroot, second, check=False),
                    "usr-default.conf was written from a newer one", "rpmimg state rebuild")
    status = rpmimg("status", "--sysroot", sysroot, "--json", "--no-size")
    assert "state rebuild" in status.err
    assert (sysroot / "@rpmimg/usr-default.conf").read_text() == boot
    assert (sysroot / STATE).read_text() == older
    rpmimg("state", "rebuild", "--sysroot", sysroot)
    assert state_of(sysroot)["default"] == first
    assert (sysroot / "@rpmimg/usr-default.conf").read_text() == boot


def _changed(change: Callable[[dict[str, Any]], object]) -> Callable[[str], str]:
    """A damage made to the parsed state (the file's layout is rpmimg's business)."""
    def damage(text: str) -> str:
        state = json.loads(text)
        change(state)
        return json.dumps(state)
    return damage


def _last_package(state: dict[str, Any]) -> dict[str, Any]:
    return state["deployments"][-1]["packages"][0]  # type: ignore[no-any-return]


def _epoch_false(state: dict[str, Any]) -> None:
    """A package both deployments have gets epoch 0 in the first, false in the second."""
    first, last = state["deployments"][0]["packages"], state["deployments"][-1]["packages"]
    both = {p["sha256"] for p in first} & {p["sha256"] for p in last}
    assert both, "the fixture's two deployments should share a package"
    for packages, epoch in ((first, 0), (last, False)):
        next(p for p in packages if p["sha256"] in both)["epoch"] = epoch


BROKEN_STATES: dict[str, Callable[[str], str]] = {
    "truncated": lambda text: text[: len(text) // 2],
    "a list": lambda text: "[]",
    "deployments a string": lambda text: json.dumps({**json.loads(text), "deployments": "1"}),
    "id a number": _changed(lambda s: s["deployments"][0].update(id=1)),
    "package sha256 not hex": _changed(lambda s: _last_package(s).update(sha256="zz" + _last_package(s)["sha256"])),
    # The later deployment's copy of a package the first one also has: records read once
    # are shared, but true == 1 and a list has no hash, so neither may pass as one.
    "package epoch false": _changed(_epoch_false),
    "package name a list": _changed(lambda s: _last_package(s).update(name=[_last_package(s)["name"]])),
    "owner_ids a package": _changed(lambda s: s["deployments"][0].update(owner_ids=_last_package(s))),
    "default unknown": lambda text: json.dumps({**json.loads(text), "default": "7"}),
    "newest a list": lambda text: json.dumps({**json.loads(text), "newest": []}),
    "nested deeply": lambda text: "[" * 5000 + "]" * 5000,
}


@pytest.mark.parametrize("damage", sorted(BROKEN_STATES))
def test_damaged_state_is_one_line_and_deletes_nothing(sysroot: Path, images: Images, damage: str) -> None:
    _ids(sysroot, images.v0, images.v1, key=images.key)
    path = sysroot / STATE
    text = path.read_text()
    path.write_text(BROKEN_STATES[damage](text))
    on_disk = _subvolumes(sysroot)
    for verb in (["status"], ["cleanup"], ["pin", "1"], ["verify"]):
        _one_line_error(rpmimg(*verb, "--sysroot", sysroot, check=False), "state.json",
                        "state rebuild")
    assert _subvolumes(sysroot) == on_disk
    rpmimg("state", "rebuild", "--sysroot", sysroot)
    assert json.loads(path.read_text()) == json.loads(text)


# --- kill -9 at every checkpoint, then the state lost ---------------------------------------

def _lose_state(sysroot: Path, how: str, older: str) -> None:
    path = sysroot / STATE
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_text(path.read_text()[:100])
    else:
        path.write_text(older)


def _sweep(sysroot: Path, manifest: Path, images: Images, older: str, log: Path,
           *extra: str) -> list[str]:
    """Deploy manifest, killed at checkpoint 1, 2, 3, ... until a run completes; after each
    kill, lose the state three ways: every changing command refuses, deleting nothing,
    and state rebuild gives back the lost state (or, with the new deployment complete but
    not yet selected for boot, the old default). Returns the labels of the kill points."""
    labels = []
    for n in range(1, 200):
        before = state_of(sysroot)
        log.unlink(missing_ok=True)
        run = deploy(sysroot, manifest, images.key, *extra, check=False,
                     env={"RPMIMG_KILL_AT": str(n), "RPMIMG_CHECKPOINT_LOG": os.fspath(log)})
        if run.code == 0:
            return labels
        assert run.code == -9, run.err
        label = log.read_text().splitlines()[-1].split(" ", 1)[1]
        labels.append(label)
        truth = (sysroot / STATE).read_text()
        for how in ("deleted", "truncated", "older"):
            _lose_state(sysroot, how, older)
            on_disk = _subvolumes(sysroot)
            _one_line_error(rpmimg("cleanup", "--sysroot", sysroot, "--keep", "1", check=False),
                            "rpmimg state rebuild")
            assert _subvolumes(sysroot) == on_disk, (label, how)
            rpmimg("state", "rebuild", "--sysroot", sysroot)
            rebuilt = state_of(sysroot)
            kept = {d["id"] for d in before["deployments"]}  # type: ignore[union-attr]
            assert kept <= {d["id"] for d in rebuilt["deployments"]}, (label, how)  # type: ignore[union-attr]
            if label in ("subvolume read-only", "state saved"):  # complete, not yet selected
                assert rebuilt["default"] == before["default"], (label, how)
            else:
                assert rebuilt == json.loads(truth), (label, how)
            (sysroot / STATE).write_text(truth)
    raise AssertionError("deploy never completed")


@pytest.mark.slow
def test_kill9_at_every_checkpoint_then_state_lost(sysroot: Path, images: Images, tmp_path: Path) -> None:
    _ids(sysroot, images.v0, key=images.key)
    older = (sysroot / STATE).read_text()
    booted = _ids(sysroot, images.v1, key=images.key)[0]
    log = tmp_path / "checkpoints"
    # v1's packages again, all in the store: a sweep of it reaches every build checkpoint.
    again = publish(tmp_path / "again", "demo", "20300101.1", list(images.v2_rpms), images.key)
    with _booted(sysroot, booted) as usr:
        marker = usr / "lib/sysimage/packages/sizes-1.0-1.x86_64.rpm"
        fetch_heavy = _sweep(sysroot, images.v2, images, older, log)  # an update
        build_heavy = _sweep(sysroot, again, images, older, log, "--full")
        labels = set(fetch_heavy + build_heavy)
        assert {"fetched package", "package verified", "package stored", "subvolume created",
                "package built", "tree complete", "deployment in place", "subvolume read-only",
                "state saved"} <= labels, labels
        assert marker.exists()
        st = state_of(sysroot)
        assert [d["version"] for d in st["deployments"]] == [  # type: ignore[union-attr]
            V0, V1, V2, "20300101.1"]
        assert sorted(_subvolumes(sysroot)) == sorted(d["id"] for d in st["deployments"])  # type: ignore[union-attr]
        for d in st["deployments"]:  # type: ignore[union-attr]
            assert rpmimg("verify", "--sysroot", sysroot, d["id"]).code == 0


def test_killed_between_state_and_boot_selection_status_settles_it(
    sysroot: Path, images: Images, tmp_path: Path
) -> None:
    _ids(sysroot, images.v1, key=images.key)
    # Two more versions of v1's packages, all in the store: their full builds pass the
    # same checkpoints, the last of which is "state saved".
    a, b = (_variant(images, tmp_path, f"v{n}", lambda m, n=n: m.update(version=f"20300101.{n}"))
            for n in (1, 2))
    log = tmp_path / "checkpoints"
    first = deploy(sysroot, a, images.key, "--full", env={"RPMIMG_CHECKPOINT_LOG": os.fspath(log)})
    count = len(log.read_text().splitlines())
    assert log.read_text().splitlines()[-1].endswith(" state saved")
    log.unlink()
    killed = deploy(sysroot, b, images.key, "--full", check=False,
                    env={"RPMIMG_KILL_AT": str(count), "RPMIMG_CHECKPOINT_LOG": os.fspath(log)})
    assert killed.code == -9 and log.read_text().splitlines()[-1].endswith(" state saved")
    boot = sysroot / "@rpmimg/usr-default.conf"
    assert f"/deployments/{first.json()['deployment']['id']}," in boot.read_text()  # the two disagree
    new_default = str(state_of(sysroot)["default"])
    assert new_default != str(first.json()["deployment"]["id"])
    # A read-only command brings them together again.
    rows = rpmimg("status", "--sysroot", sysroot, "--json", "--no-size").json()["deployments"]
    assert [row["id"] for row in rows if row["default"]] == [new_default]  # type: ignore[union-attr]
    assert f"/deployments/{new_default}," in boot.read_text()


def test_read_only_views_work_on_a_sysroot_mounted_read_only(sysroot: Path, images: Images) -> None:
    # A rescue system or a disk looked at: the lock can't be taken (EROFS), and the views
    # need none; a change is still refused in one line.
    deployed = deploy(sysroot, images.v1, images.key).json()["deployment"]["id"]
    subprocess.run(["mount", "-o", "remount,ro", sysroot], check=True)
    try:
        status = rpmimg("status", "--sysroot", sysroot)
        assert status.code == 0 and "default" in status.out, status.err
        rows = rpmimg("status", "--sysroot", sysroot, "--json").json()["deployments"]
        assert [(row["id"], row["default"]) for row in rows] == [(deployed, True)]  # type: ignore[index]
        assert rpmimg("verify", "--sysroot", sysroot).code == 0
        refused = rpmimg("rollback", "--sysroot", sysroot, check=False)
        assert refused.code != 0 and len(refused.err.strip().splitlines()) == 1, refused.err
        assert "Read-only file system" in refused.err
    finally:
        subprocess.run(["mount", "-o", "remount,rw", sysroot], check=True)


# --- verify anchored to what was signed ------------------------------------------------------

@contextlib.contextmanager
def _writable(tree: Path) -> Iterator[Path]:
    kernel.subvolume_set_readonly(tree, False)
    try:
        yield tree
    finally:
        kernel.subvolume_set_readonly(tree, True)


def test_verify_takes_packages_from_the_record_not_the_tree(sysroot: Path, images: Images) -> None:
    d = _ids(sysroot, images.v1, key=images.key)[0]
    tree = sysroot / "@rpmimg/deployments" / d
    headers = tree / "lib/sysimage/packages"
    with _writable(tree):
        # Hide the tampering of a file by deleting its package's header file...
        (headers / "sizes-1.0-1.x86_64.rpm").unlink()
        flip_byte(tree / SIZES_FILE, 10)
        os.utime(tree / SIZES_FILE, (1_600_004_097, 1_600_004_097))
        # ...alter another header, and add one for a package the deployment does not have.
        flip_byte(headers / "modes-1.0-1.x86_64.rpm", 200)
        shutil.copy(headers / "bulk-1.0-1.x86_64.rpm", headers / "evil-1.0-1.x86_64.rpm")
    r = rpmimg("verify", "--sysroot", sysroot, "--json", check=False)
    assert r.code == 1
    found = {m["path"]: m["what"] for m in r.json()["mismatches"]}  # type: ignore[union-attr]
    assert found == {
        "/usr/share/sizes/size-4097": ["digest"],
        "/usr/lib/sysimage/packages/sizes-1.0-1.x86_64.rpm": ["missing"],
        "/usr/lib/sysimage/packages/modes-1.0-1.x86_64.rpm": ["digest"],
        "/usr/lib/sysimage/packages/evil-1.0-1.x86_64.rpm": ["extra"],
    }
    fixed = rpmimg("verify", "--sysroot", sysroot, "--repair", "--keyring", images.key.public,
                   "--json").json()
    assert fixed["mismatches"] == [] and sorted(fixed["repaired"]) == sorted(found)  # type: ignore[arg-type]
    assert not (headers / "evil-1.0-1.x86_64.rpm").exists()
    assert kernel.subvolume_is_readonly(tree)


def _store_entry(sysroot: Path, name: str) -> Path:
    d = state_of(sysroot)["deployments"][-1]  # type: ignore[index]
    sha = next(p["sha256"] for p in d["packages"] if p["name"] == name)
    return sysroot / "@rpmimg/store" / sha[:2] / f"{sha}.rpm"


def test_damaged_store_entry_is_found_and_refetched(sysroot: Path, images: Images) -> None:
    _ids(sysroot, images.v1, key=images.key)
    entry = _store_entry(sysroot, "bulk")
    clean = entry.read_bytes()
    flip_byte(entry, entry.stat().st_size // 2)  # inside a file's data
    r = rpmimg("verify", "--sysroot", sysroot, "--store", check=False)
    assert r.code == 1 and f"damaged  {entry}" in r.out and "1 damaged" in r.out
    # A full build does not build the damage in: the entry is fetched again first.
    new = deploy(sysroot, images.v2, images.key, "--full").json()
    assert new["fetched"] >= 1 and entry.read_bytes() == clean
    assert rpmimg("verify", "--sysroot", sysroot, "--store").code == 0
    assert rpmimg("verify", "--sysroot", sysroot).code == 0

    # --repair does not re-extract damage either.
    tree = sysroot / "@rpmimg/deployments" / str(new["deployment"]["id"])
    entry = _store_entry(sysroot, "sizes")
    flip_byte(entry, entry.stat().st_size - 4096 - 10)
    with _writable(tree):
        flip_byte(tree / SIZES_FILE, 10)
    fixed = rpmimg("verify", "--sysroot", sysroot, "--repair", "--keyring", images.key.public,
                   "--json").json()
    assert fixed["mismatches"] == [] and fixed["repaired"] == ["/usr/share/sizes/size-4097"]
    assert rpmimg("verify", "--sysroot", sysroot, "--store").code == 0


def test_update_reads_a_kept_package_afresh_and_refetches_it_when_changed(
    sysroot: Path, images: Images
) -> None:
    """An update reads each stored package once per deploy, never from an earlier one: the
    entry of a package v2 keeps, changed after v1 was deployed, is found and fetched again
    (the intact mark of the base is about the deployment, not the store)."""
    _ids(sysroot, images.v1, key=images.key)
    entry = _store_entry(sysroot, "bulk")  # kept by v2
    clean = entry.read_bytes()
    flip_byte(entry, 100)  # in the signature header: the stored header no longer reads
    new = deploy(sysroot, images.v2, images.key).json()
    assert new["build"] == "update"
    assert entry.read_bytes() == clean
    assert rpmimg("verify", "--sysroot", sysroot, "--store").code == 0
    assert rpmimg("verify", "--sysroot", sysroot).code == 0


def test_an_entry_a_crash_left_unwritten_is_hashed_and_fetched_again_by_an_update(
    sysroot: Path, images: Images
) -> None:
    """Store entries are not synced one by one: the deployment using them syncs the filesystem
    before the state names it. An entry a crash left with its name but without its data
    (btrfs committed the rename, not the writeback: zeros) is in no deployment; the next update
    hashes it before use and fetches it again, rather than building from it. (Here the
    header made it to the disk and the file data did not: the header still reads.)"""
    _ids(sysroot, images.v1, key=images.key)
    v2 = json.loads(images.v2.read_text())["packages"]
    in_v1 = {p["sha256"] for p in json.loads(images.v1.read_text())["packages"]}
    new_only = [p for p in v2 if p["sha256"] not in in_v1]
    assert new_only
    entries = []
    for p in new_only:
        entry = sysroot / "@rpmimg/store" / p["sha256"][:2] / f"{p['sha256']}.rpm"
        entry.parent.mkdir(exist_ok=True)
        data = (images.v2.parent / p["location"]).read_bytes()
        with ExtentsPackage.open(images.v2.parent / p["location"]) as pkg:
            start = pkg.index.data_offset
        entry.write_bytes(data[:start] + bytes(len(data) - start))
        entry.chmod(0o444)
        entries.append(entry)
    new = deploy(sysroot, images.v2, images.key).json()
    assert new["build"] == "update" and new["fetched"] == len(new_only)
    for p, entry in zip(new_only, entries, strict=True):
        assert sha256_file(entry) == p["sha256"]
    assert rpmimg("verify", "--sysroot", sysroot, "--store").code == 0
    assert rpmimg("verify", "--sysroot", sysroot).code == 0


def test_update_falling_back_to_a_full_build_does_not_build_store_damage_in(
    sysroot: Path, images: Images
) -> None:
    _ids(sysroot, images.v1, key=images.key)
    _store_entry(sysroot, "empty").unlink()  # v2 drops "empty": the update can't be a delta
    entry = _store_entry(sysroot, "bulk")  # kept by v2, so not re-hashed before an update
    clean = entry.read_bytes()
    flip_byte(entry, entry.stat().st_size // 2)
    new = deploy(sysroot, images.v2, images.key).json()
    assert new["build"] == "full" and "no longer in the store" in str(new["full_reason"])
    assert entry.read_bytes() == clean
    assert rpmimg("verify", "--sysroot", sysroot).code == 0
    assert sorted(os.listdir(sysroot / "@rpmimg/deployments")) == ["1", str(new["deployment"]["id"])]


def test_a_store_entry_changed_after_it_was_marked_is_found_and_refetched(
    sysroot: Path, images: Images, tmp_path: Path
) -> None:
    """A full build hashes the store entries no mark vouches for and marks them
    (deploy.storemarks); one changed since, size and times kept, is hashed again and refetched."""
    _ids(sysroot, images.v1, key=images.key)
    deploy(sysroot, images.v2, images.key, "--full")
    entry = _store_entry(sysroot, "bulk")  # in both images
    marks = json.loads((sysroot / "@rpmimg/store-checked.json").read_text())["marks"]
    assert entry.stem in marks
    clean = entry.read_bytes()
    st = entry.stat()
    flip_byte(entry, st.st_size // 2)
    os.utime(entry, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = publish(tmp_path / "again", "demo", "20300101.1", list(images.v2_rpms), images.key)
    new = deploy(sysroot, again, images.key, "--full").json()
    assert new["build"] == "full" and new["fetched"] == 1 and entry.read_bytes() == clean
    assert rpmimg("verify", "--sysroot", sysroot, "--store").code == 0
    assert rpmimg("verify", "--sysroot", sysroot).code == 0


def _variant(images: Images, tmp_path: Path, name: str, change: Callable[[dict[str, Any]], Any],
             raw: Callable[[str], str] | None = None) -> Path:
    """A manifest made from v1's by change(), signed by the vendor key, beside the pool."""
    out = tmp_path / name
    (out / "images/demo/9").mkdir(parents=True)
    (out / "pool").symlink_to(images.output / "pool")
    manifest = json.loads(images.v1.read_text())
    change(manifest)
    text = json.dumps(manifest)
    path = out / "images/demo/9/manifest.json"
    path.write_text(raw(text) if raw else text)
    sign_file(path, images.key)
    return path


def test_stored_package_is_checked_against_its_manifest_entry(
    sysroot: Path, images: Images, tmp_path: Path
) -> None:
    _ids(sysroot, images.v1, key=images.key)
    before = (sysroot / STATE).read_text()

    def rename(m: dict[str, Any]) -> None:
        m["version"] = "20300101.1"
        p = next(p for p in m["packages"] if p["name"] == "sizes")
        p["name"], p["version"] = "openssl", "9.9"

    r = deploy(sysroot, _variant(images, tmp_path, "renamed", rename), images.key, check=False)
    _one_line_error(r, "openssl-9.9-1.x86_64", "sizes-1.0-1.x86_64", "does not match the manifest")
    assert (sysroot / STATE).read_text() == before


@pytest.fixture(scope="module")
def noisy_image(tmp_path_factory: pytest.TempPathFactory, images: Images) -> Path:
    """An image of one package holding 40 MiB of random bytes: its zstd copy is as large as
    the package, so fetching it over HTTP needs twice the room the space check counts."""
    work = tmp_path_factory.mktemp("noisy")
    spec = catalog.PackageSpec(
        name="noisy", files=(FileSpec("/usr/share/noisy/data", size=40 << 20, fill=Fill.RANDOM),)
    )
    return publish(work / "out", "noisy", V1, [build_package(spec, work / "rpms")], images.key)


@pytest.mark.slow
def test_full_filesystem_names_the_phase_and_the_path(images: Images, noisy_image: Path) -> None:
    reason = btrfs_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with loop_btrfs(size=200 << 20) as small:
        seed_accounts(small, catalog.PASSWD, catalog.GROUP)
        deploy(small, images.v0, images.key)
        before = ((small / STATE).read_text(), _subvolumes(small))
        st = os.statvfs(small)
        filler = small / "filler"
        with open(filler, "wb") as f:  # leave about 64 MiB: the check wants 58
            os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - (64 << 20))
        os.sync()
        out = noisy_image.parents[3]
        with http_server(out) as base:
            url = f"{base}/{noisy_image.relative_to(out)}"
            r = deploy(small, url, images.key, "--allow-unsigned-packages", "--switch",
                       check=False)
        _one_line_error(r, f"{small}/@rpmimg/staging/downloads",
                        "no space left on the device while fetching the packages"
                        f" of noisy {V1}", "nothing was changed")
        assert ((small / STATE).read_text(), _subvolumes(small)) == before
        assert not list((small / "@rpmimg/staging/downloads").glob("*.unzst"))
        assert rpmimg("verify", "--sysroot", small).code == 0


# --- replay, manifests of the wrong shape, keys.d, closed stdout -----------------------------

def test_replaying_an_old_signed_manifest_is_a_downgrade(sysroot: Path, images: Images) -> None:
    first, second = _ids(sysroot, images.v1, images.v2, key=images.key)
    r = deploy(sysroot, images.v1, images.key, check=False)
    _one_line_error(r, f"{V1} is older than {V2}", "--allow-downgrade")
    assert state_of(sysroot)["default"] == second
    again = deploy(sysroot, images.v1, images.key, "--allow-downgrade").json()
    assert (again["outcome"], again["deployment"]["id"]) == ("reactivated", first)
    # rollback stays the way back without any flag.
    rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public, images.v2)
    assert state_of(sysroot)["default"] == second
    assert rpmimg("rollback", "--sysroot", sysroot, "--json").json()["deployment"]["id"] == first


MANIFEST_DAMAGE: dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[[str], str] | None, str]] = {
    "scriptlets a number": (lambda m: m["report"].update(scriptlets=5), None, "'scriptlets'"),
    "outside_usr lists numbers": (
        lambda m: m["report"].update(outside_usr={"x": [1]}), None, "'outside_usr' of 'x'"),
    "report a list": (lambda m: m.update(report=[1]), None, "field 'report'"),
    "nested 1000 deep": (
        lambda m: m.update(report="DEEP"), lambda t: t.replace('"DEEP"', "[" * 1000 + "]" * 1000),
        "nested deeper than"),
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_signed_manifest_of_the_wrong_shape_is_one_line(
    sysroot: Path, images: Images, tmp_path: Path, damage: str
) -> None:
    change, raw, needle = MANIFEST_DAMAGE[damage]
    path = _variant(images, tmp_path, "bad", change, raw)
    _one_line_error(deploy(sysroot, path, images.key, check=False), "manifest.json", needle)
    assert not (sysroot / STATE).exists()
    # Refused before the lock is taken: rpmimg's directories are not even created.
    deployments = sysroot / "@rpmimg/deployments"
    assert not deployments.exists() or os.listdir(deployments) == []


def test_stray_file_in_keys_d_is_skipped_with_a_warning(sysroot: Path, images: Images) -> None:
    keys = sysroot / "etc/rpmimg/keys.d"
    keys.mkdir(parents=True)
    shutil.copy(images.key.public, keys / "vendor.asc")
    (keys / "README").write_text("Put vendor keys here.\n")
    (keys / "vendor.asc~").write_bytes(b"\x00not a key")
    r = rpmimg("deploy", "--sysroot", sysroot, "--json", images.v0)
    assert r.json()["outcome"] == "deployed"
    assert f"{keys / 'README'}: skipped: not an OpenPGP public key" in r.err
    assert f"{keys / 'vendor.asc~'}: skipped" in r.err


def test_keys_d_key_rpm_cannot_use_is_skipped_where_packages_are_checked(sysroot: Path, images: Images) -> None:
    keys = sysroot / "etc/rpmimg/keys.d"
    keys.mkdir(parents=True)
    binary = subprocess.run(["gpg", "--dearmor"], input=images.key.public.read_bytes(),
                            capture_output=True, check=True).stdout
    assert binary[0] == 0x99
    (keys / "0-broken.gpg").write_bytes(binary[:3] + b"\x05" + binary[4:])  # key version 5
    shutil.copy(images.key.public, keys / "vendor.asc")
    r = rpmimg("deploy", "--sysroot", sysroot, "--json", images.v0)
    assert r.json()["outcome"] == "deployed"
    assert r.json()["fetched"] == 1  # its signed package checked against vendor.asc alone
    assert f"{keys / '0-broken.gpg'}: skipped: not a usable OpenPGP public key" in r.err


def test_closed_stdout_exits_quietly(sysroot: Path, images: Images) -> None:
    for m in (images.v0, images.v1, images.v2):
        deploy(sysroot, m, images.key)
    proc = subprocess.run(
        f"{sys.executable} -m rpmimg status --json --no-size --sysroot {sysroot} | head -c 10",
        shell=True, capture_output=True, text=True, check=False, executable="/bin/bash",
        env={**os.environ, "PYTHONUNBUFFERED": "0"},
    )
    assert len(proc.stdout) == 10
    assert proc.stderr == ""
