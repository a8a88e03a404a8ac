"""Faults: kill -9 during fetch and build, a full filesystem, refused manifests and packages,
concurrent deploys."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploytools import V0, V1, V2, Images, deploy, rpmimg, state_of
from imagepub import publish
from servers import http_server

from fixtures import catalog
from fixtures.build import build_package
from fixtures.signing import generate_key
from fixtures.spec import FileSpec, Fill

from conftest import btrfs_unavailable_reason, loop_btrfs
from oracle import seed_accounts

pytest_plugins = ("deployenv",)

FETCH_LABELS = {"downloaded package", "fetched", "package verified", "package stored"}
BUILD_LABELS = {"subvolume created", "package built", "tree complete", "deployment in place",
                "subvolume read-only"}


def _snapshot(sysroot: Path) -> tuple[str, str]:
    root = sysroot / "@rpmimg"
    return (root / "state.json").read_text(), (root / "usr-default.conf").read_text()


def _kill_sweep(sysroot: Path, source: str, images: Images, log: Path) -> list[str]:
    """Deploy, killed at checkpoint 1, 2, 3, ... until a run completes; returns the labels
    of the kill points. After each kill the previous default must be intact."""
    before = _snapshot(sysroot)
    killed_at = []
    for n in range(1, 200):
        log.unlink(missing_ok=True)
        run = deploy(sysroot, source, images.key, check=False,
                     env={"RPMIMG_KILL_AT": str(n), "RPMIMG_CHECKPOINT_LOG": os.fspath(log)})
        if run.code == 0:
            return killed_at
        assert run.code == -9, run.err
        label = log.read_text().splitlines()[-1].split(" ", 1)[1]
        killed_at.append(label)
        if label == "state saved":  # committed: the new default is complete
            assert _snapshot(sysroot)[0] != before[0]
            continue
        assert _snapshot(sysroot) == before, f"state changed by a kill at {label}"
        rows = rpmimg("status", "--sysroot", sysroot, "--json", "--no-size").json()["deployments"]
        assert [r["default"] for r in rows].count(True) == 1  # type: ignore[union-attr]
    raise AssertionError("deploy never completed")


@pytest.mark.slow
def test_kill9_during_fetch_and_build_keeps_the_previous_default(
    sysroot: Path, images: Images, tmp_path: Path
) -> None:
    deploy(sysroot, images.v0, images.key)
    log = tmp_path / "checkpoints"
    with http_server(images.output) as base:
        fetch_heavy = _kill_sweep(sysroot, f"{base}/{images.v1.relative_to(images.output)}", images, log)
    build_heavy = _kill_sweep(sysroot, os.fspath(images.v2), images, log)
    labels = fetch_heavy + build_heavy
    assert len(labels) >= 20, labels
    assert FETCH_LABELS & set(labels) and len(BUILD_LABELS & set(labels)) >= 4, labels
    # The last deploy is complete, verifies, and left nothing behind.
    st = state_of(sysroot)
    assert [d["version"] for d in st["deployments"]] == [V0, V1, V2]  # type: ignore[union-attr]
    assert rpmimg("verify", "--sysroot", sysroot).code == 0
    assert sorted(os.listdir(sysroot / "@rpmimg/deployments")) == sorted(
        d["id"] for d in st["deployments"]  # type: ignore[union-attr]
    )
    assert os.listdir(sysroot / "@rpmimg/staging") == ["downloads"]


@pytest.fixture(scope="module")
def huge_image(tmp_path_factory: pytest.TempPathFactory, images: Images) -> Path:
    """An image whose extents RPMs (200 MiB of zeros, compressing to almost nothing) can't
    fit on a minimal btrfs."""
    work = tmp_path_factory.mktemp("huge")
    spec = catalog.PackageSpec(
        name="huge", files=(FileSpec("/usr/share/huge/zeros", size=200 << 20, fill=Fill.SPARSE),)
    )
    rpm = build_package(spec, work / "rpms")
    return publish(work / "out", "huge", V1, [rpm], images.key)


@pytest.mark.slow
def test_too_small_filesystem_fails_clearly_changing_nothing(images: Images, huge_image: Path) -> None:
    reason = btrfs_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with loop_btrfs(size=160 << 20) as small:
        seed_accounts(small, catalog.PASSWD, catalog.GROUP)
        deploy(small, images.v0, images.key)
        before = _snapshot(small)
        result = deploy(small, huge_image, images.key, "--allow-unsigned-packages", "--switch",
                        check=False)
        assert result.code == 1
        assert "not enough free space for huge" in result.err and "MiB free" in result.err
        assert _snapshot(small) == before
        assert len(list((small / "@rpmimg/store").glob("*/*.rpm"))) == 1  # v0's only
        assert os.listdir(small / "@rpmimg/staging/downloads") == []


def test_refusals_tampered_wrong_key_downgrade_unsigned_package(
    sysroot: Path, images: Images, tmp_path: Path
) -> None:
    deploy(sysroot, images.v2, images.key)
    before = _snapshot(sysroot)

    tampered = tmp_path / "tampered"
    shutil.copytree(images.v1.parent, tampered)
    text = (tampered / "manifest.json").read_text()
    (tampered / "manifest.json").write_text(text.replace('"version": "1.0"', '"version": "9.0"', 1))
    r = deploy(sysroot, tampered, images.key, check=False)
    assert r.code == 1 and "BAD signature" in r.err

    other = generate_key(tmp_path / "other-key")
    r = rpmimg("deploy", "--sysroot", sysroot, "--keyring", other.public, images.v2.parent.parent / V1,
               check=False)
    assert r.code == 1 and "not a trusted key" in r.err

    r = deploy(sysroot, images.v1, images.key, check=False)
    assert r.code == 1 and f"{V1} is older than {V2}" in r.err and "--allow-downgrade" in r.err

    r = deploy(sysroot, images.unsigned, images.key, check=False)
    assert r.code == 1 and "epoch-3:2.5-7.x86_64" in r.err and "header signature" in r.err
    assert _snapshot(sysroot) == before

    # The same key from the sysroot's keys.d is trusted without --keyring.
    keys = sysroot / "etc/rpmimg/keys.d"
    keys.mkdir(parents=True)
    shutil.copy(images.key.public, keys / "vendor.asc")
    down = rpmimg("deploy", "--sysroot", sysroot, "--allow-downgrade", "--json", images.v1).json()
    assert (down["outcome"], down["deployment"]["version"]) == ("deployed", V1)


def test_concurrent_deploys_do_not_interleave(sysroot: Path, images: Images) -> None:
    def start(*extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "rpmimg", "deploy", "--sysroot", os.fspath(sysroot), "--keyring",
             os.fspath(images.key.public), "--json", "--lock-wait", "60", *extra,
             os.fspath(images.v1)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    # Waiting long enough: one deploys, the other then finds nothing to do.
    procs = [start(), start()]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    outcomes = sorted(json.loads(o)["outcome"] for o, _ in outs)
    assert outcomes == ["deployed", "no change"]
    assert len(state_of(sysroot)["deployments"]) == 1  # type: ignore[arg-type]

    # A deploy that can't get the lock in time fails naming the holder, changing nothing.
    before = _snapshot(sysroot)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import pathlib, time\nfrom deploy.lock import sysroot_lock\n"
         f"with sysroot_lock(pathlib.Path({os.fspath(sysroot / '@rpmimg/lock')!r})):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        r = rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public,
                   "--lock-wait", "0.5", images.v2, check=False)
    finally:
        holder.kill()
        holder.wait()
    assert r.code == 1 and f"another rpmimg is changing this system (pid {holder.pid})" in r.err
    assert f"waiting up to 0.5 s for another rpmimg (pid {holder.pid})" in r.err  # not silent
    assert _snapshot(sysroot) == before
