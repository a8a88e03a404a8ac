"""Deploying over every transport for real: HTTP from a server on 127.0.0.1, an rsync daemon,
a published directory; and the bounds each keeps against a hostile one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from deploytools import V0, Images, deploy, rpmimg, state_of
from hostile_httpd import trickle_tcp
from servers import Faults, http_server, rsync_daemon

pytest_plugins = ("deployenv",)


def _package(manifest: Path, name: str) -> dict[str, object]:
    packages = json.loads(manifest.read_text())["packages"]
    found: dict[str, object] = next(p for p in packages if p["name"] == name)
    return found


def _url(base: str, output: Path, manifest: Path) -> str:
    return f"{base}/{manifest.relative_to(output)}"


def test_http_resumes_a_cut_download_and_refuses_a_corrupted_one(sysroot: Path, images: Images) -> None:
    sizes = _package(images.v1, "sizes")
    zst = Path(str(sizes["zstd"]["location"])).name  # type: ignore[index]
    faults = Faults(cut_after={zst: 100_000})
    with http_server(images.output, faults) as base:
        result = deploy(sysroot, _url(base, images.output, images.v1), images.key).json()
        assert result["outcome"] == "deployed"
        # The cut download was resumed where it stopped, not restarted.
        ranges = [r for p, r in faults.requests if p.endswith(zst)]
        assert len(ranges) == 2 and ranges[0] is None and ranges[1] is not None
        assert 50_000 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= 100_000
        # Only the compressed copies travel: about the size of the original RPMs.
        zstd_total = sum(p["zstd"]["size"] for p in json.loads(images.v1.read_text())["packages"])
        assert result["transferred_bytes"] == zstd_total

        before = state_of(sysroot)
        bad = _package(images.v2, "payload-zstd")
        bad_zst = Path(str(bad["zstd"]["location"])).name  # type: ignore[index]
        faults.corrupt.add(bad_zst)
        failed = deploy(sysroot, _url(base, images.output, images.v2), images.key, check=False)
        assert failed.code == 1
        assert "payload-zstd-2.0-1.x86_64" in failed.err and "sha256" in failed.err
        assert state_of(sysroot) == before
        assert not (sysroot / "@rpmimg/store" / str(bad["sha256"])[:2] / f"{bad['sha256']}.rpm").exists()
        faults.corrupt.clear()
        fixed = deploy(sysroot, _url(base, images.output, images.v2), images.key).json()
        assert fixed["outcome"] == "deployed"


def test_rsync_delta_transfer_uses_the_previous_version(sysroot: Path, images: Images, tmp_path: Path) -> None:
    with rsync_daemon(images.output, tmp_path / "rsyncd") as base:
        first = deploy(sysroot, _url(base, images.output, images.v1), images.key).json()
        assert first["outcome"] == "deployed"
        assert first["transferred_bytes"] == first["fetched_bytes"]  # nothing to build on yet
        second = deploy(sysroot, _url(base, images.output, images.v2), images.key).json()
    assert second["outcome"] == "deployed"
    # "sizes" 1.1 changed one 4 KiB file of 1.1 MiB: rsync sends little more than that.
    sizes = _package(images.v2, "sizes")
    assert second["fetched_bytes"] > int(sizes["size"])  # type: ignore[call-overload]
    assert second["transferred_bytes"] < int(sizes["size"]) // 4, second  # type: ignore[call-overload]


# --- bounds on the local and rsync transports ------------------------------------------------

FAST = {"RPMIMG_FETCH_DEADLINE_BASE": "3", "RPMIMG_FETCH_MIN_RATE": "1e12",
        "RPMIMG_FETCH_IDLE_TIMEOUT": "2", "RPMIMG_FETCH_CONNECT_TIMEOUT": "2"}


def _copy_version(images: Images, manifest: Path, dest: Path) -> tuple[Path, list[Path]]:
    """A published directory holding one version and the pool files it names; returns the
    manifest and the pool files (.rpm and .rpm.zst)."""
    rel = manifest.relative_to(images.output)
    shutil.copytree(manifest.parent, dest / rel.parent)
    pool = []
    for p in json.loads(manifest.read_text())["packages"]:
        for loc in (p["location"], p["zstd"]["location"]):
            src = Path(os.path.normpath(manifest.parent / loc))
            target = dest / src.relative_to(images.output)
            target.parent.mkdir(parents=True, exist_ok=True)
            pool.append(Path(shutil.copy(src, target)))
    return dest / rel, pool


def _digest_tree(path: Path) -> dict[str, str]:
    return {os.fspath(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _nothing_deployed(sysroot: Path) -> None:
    assert list((sysroot / "@rpmimg/deployments").iterdir()) == []
    assert not list((sysroot / "@rpmimg/store").rglob("*.rpm"))


def test_local_pool_symlink_out_of_the_published_directory_is_refused(
        sysroot: Path, images: Images, tmp_path: Path) -> None:
    manifest, (rpm, zst) = _copy_version(images, images.v0, tmp_path / "pub")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "secret").write_bytes(rpm.read_bytes())  # even the right bytes, if outside
    before = _digest_tree(decoy)
    rpm.unlink()
    rpm.symlink_to(decoy / "secret")
    zst.unlink()
    result = deploy(sysroot, manifest, images.key, check=False)
    assert result.code == 1
    assert result.err.strip() == (f"rpmimg: error: empty-1.0-1.x86_64: {rpm}: leads outside "
                                  f"{tmp_path / 'pub'}")
    assert _digest_tree(decoy) == before
    _nothing_deployed(sysroot)
    # A symlink that stays inside the published directory is followed.
    (tmp_path / "pub" / "elsewhere").mkdir()
    inside = tmp_path / "pub" / "elsewhere" / rpm.name
    inside.write_bytes((decoy / "secret").read_bytes())
    rpm.unlink()
    rpm.symlink_to(os.path.relpath(inside, rpm.parent))
    assert deploy(sysroot, manifest, images.key).json()["outcome"] == "deployed"


def test_local_file_of_the_wrong_size_is_refused_before_copying(
        sysroot: Path, images: Images, tmp_path: Path) -> None:
    manifest, (rpm, _) = _copy_version(images, images.v0, tmp_path / "pub")
    size = rpm.stat().st_size
    with open(rpm, "ab") as f:
        f.truncate(size + (1 << 30))  # a sparse gigabyte more than the manifest states
    result = deploy(sysroot, manifest, images.key, check=False)
    assert result.code == 1
    assert result.err.strip() == (f"rpmimg: error: empty-1.0-1.x86_64: {rpm}: {size + (1 << 30)} "
                                  f"bytes, the manifest states {size} bytes")
    downloads = sysroot / "@rpmimg/staging/downloads"
    assert [p for p in downloads.iterdir() if p.stat().st_size > size] == []
    _nothing_deployed(sysroot)


def test_rsync_file_larger_than_stated_is_not_transferred(
        sysroot: Path, images: Images, tmp_path: Path) -> None:
    manifest, (rpm, _) = _copy_version(images, images.v0, tmp_path / "pub")
    size = rpm.stat().st_size
    with open(rpm, "ab") as f:
        f.truncate(size + (64 << 20))
    with rsync_daemon(tmp_path / "pub", tmp_path / "rsyncd") as base:
        url = f"{base}/{manifest.relative_to(tmp_path / 'pub')}"
        result = deploy(sysroot, url, images.key, check=False)
    assert result.code == 1
    rpm_url = f"{base}/{rpm.relative_to(tmp_path / 'pub')}"
    assert result.err.strip() == (f"rpmimg: error: empty-1.0-1.x86_64: {rpm_url}: larger than the "
                                  f"{size} bytes the manifest states")
    staging = sysroot / "@rpmimg/staging"
    assert [p for p in staging.rglob("*") if p.is_file() and p.stat().st_size > size] == []
    _nothing_deployed(sysroot)


def test_rsync_trickling_daemon_is_given_up_at_the_deadline(sysroot: Path, images: Images) -> None:
    with trickle_tcp(b"@RSYNCD: 31.0\n" * 100, 0.2) as port:
        url = f"rsync://127.0.0.1:{port}/images/demo/{V0}/manifest.json"
        started = time.monotonic()
        result = deploy(sysroot, url, images.key, env=FAST, check=False)
        took = time.monotonic() - started
    assert result.code == 1
    assert result.err.strip() == (f"rpmimg: error: cannot fetch the manifest: {url}: gave up after "
                                  "3.0 s, past the deadline for 16777216 bytes")
    assert took < 10
    # The lock is free at once.
    assert rpmimg("cleanup", "--sysroot", sysroot, "--lock-wait", "0").code == 0
