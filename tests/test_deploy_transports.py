"""Deploying over every transport for real: HTTP from a server on 127.0.0.1, an rsync daemon."""

from __future__ import annotations

import json
from pathlib import Path

from deploytools import Images, deploy, state_of
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
