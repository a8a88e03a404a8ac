"""The benchmark harness's measuring and reporting: ratios, targets, peak memory, the table and plot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from benchmarks.measure import Target, not_run, row, run_timed, stderr_tail
from benchmarks.metrics_image import Sent, new_boot_bytes, sent_by_kind
from benchmarks.report import markdown, write_results
from fixtures.rsyncd import rsync_daemon, url_of


def test_ratio_and_target() -> None:
    r = row("deploy", 2.0, "rpm -i", 30.0, "s", ratio=lambda ours, peer: peer / ours,
            target=Target(">=", 10))
    assert r.ratio == 15.0 and r.met is True
    r = row("extract", 3.0, "cp", 1.0, "s", target=Target("<=", 1.5))
    assert r.ratio == 3.0 and r.met is False
    assert row("x", None, "peer", 1.0, "s", target=Target("<=", 1)).met is None


def test_not_run_keeps_the_peer_figure() -> None:
    r = not_run("verify", "rpm -Va", 4.2, "s", "rpmimg verify not available", Target(">=", 2))
    assert r.rpmimg is None and r.ratio is None and r.met is None
    assert r.peer_value == 4.2 and r.note == "not run: rpmimg verify not available"


def test_peak_rss_is_the_commands_own() -> None:
    # 200 MB held by the child; the parent test process is far from that.
    t = run_timed([[sys.executable, "-c", "b = bytearray(200_000_000); b[::4096] = b'x' * len(b[::4096])"]])
    assert 190e6 < t.max_rss < 400e6
    small = run_timed([["true"]])
    assert small.max_rss < 50e6


def test_failure_names_the_error() -> None:
    with pytest.raises(subprocess.CalledProcessError) as e:
        run_timed([["sh", "-c", "echo first >&2; echo 'disk full' >&2; exit 3"]])
    assert stderr_tail(e.value) == "disk full"


def test_results_files(tmp_path: Path) -> None:
    rows = [
        row("transcode throughput", 50.0, "rpm2cpio", 100.0, "MB/s", target=Target(">=", 1)),
        row("solve time", 1.0, "testsolv", 1.0, "s", target=Target("<=", 1.2)),
        not_run("verify time", "rpm -Va", 3.0, "s", "not yet", Target(">=", 2)),
    ]
    written = write_results(rows, {"date": "2026-11-22", "machine": "2 cores"}, tmp_path)
    data = json.loads(written["latest.json"].read_text())
    assert [d["metric"] for d in data] == ["transcode throughput", "solve time", "verify time"]
    assert set(data[0]) >= {"metric", "rpmimg", "peer", "peer_value", "ratio", "target", "met", "unit"}
    table = written["latest.md"].read_text()
    assert "no (off by 2.00x)" in table and "| yes |" in table and "not run: not yet" in table
    svg = ET.parse(written["latest.svg"]).getroot()
    texts = [t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert any("0.50x" in t for t in texts) and any("not run" in t for t in texts)
    assert markdown(rows, {}).count("\n| ") == 4  # header + three rows


def test_rsync_daemon_counts_bytes_sent(tmp_path: Path) -> None:
    if shutil.which("rsync") is None:
        pytest.skip("rsync not installed")
    served, work, dest = tmp_path / "served", tmp_path / "work", tmp_path / "dest"
    for d in (served, work, dest):
        d.mkdir()
    (served / "a.bin").write_bytes(os.urandom(300_000))
    with rsync_daemon(served, work) as daemon:
        subprocess.run(["rsync", url_of(daemon, served, served / "a.bin"), os.fspath(dest)], check=True)
        first = daemon.bytes_sent()
        assert 300_000 <= first < 320_000
        # unchanged file again: rsync's delta transfer sends almost nothing
        subprocess.run(["rsync", "--no-whole-file", "-I", url_of(daemon, served, served / "a.bin"),
                        os.fspath(dest)], check=True)
        assert daemon.bytes_sent() - first < 20_000
        (served / "pool").mkdir()
        (served / "pool" / "b.bin").write_bytes(os.urandom(100_000))
        subprocess.run(["rsync", url_of(daemon, served, served / "pool" / "b.bin"), os.fspath(dest)], check=True)
        by_path = daemon.sent_by_path()
    assert (dest / "a.bin").read_bytes() == (served / "a.bin").read_bytes()
    # Each file's bytes under its path in the module: what a benchmark splits by kind.
    assert sorted(by_path) == ["a.bin", "pool/b.bin"]
    assert 100_000 <= by_path["pool/b.bin"] < 110_000
    assert sum(by_path.values()) == daemon.bytes_sent()


def test_bytes_sent_by_kind() -> None:
    """The update and full-image rows count the pool's package files; kernels and initrds
    (pool/boot/) and the manifest with its signature are reported beside them."""
    by_path = {
        "/pool/ab/ab12-bash-5.2-1.x86_64.rpm.seek.zst": 1000,
        "pool/cd/cd34-glibc-2.36-1.x86_64.rpm.zst": 500,  # an rsync module path: no "/"
        "/pool/boot/ef56-initrd": 70_000,
        "pool/boot/0a1b-vmlinuz": 8_000,
        "/images/os/20261203.1/manifest.json": 300,
        "images/os/20261203.1/manifest.json.asc": 20,
    }
    sent = sent_by_kind(by_path, requests=7)
    assert sent == Sent(packages=1500, boot=78_000, metadata=320, requests=7)
    assert sent.total == sum(by_path.values())
    later = sent_by_kind({**by_path, "/pool/ab/ab12-bash-5.2-1.x86_64.rpm.seek.zst": 1600}, requests=9)
    assert later.minus(sent) == Sent(packages=600, boot=0, metadata=0, requests=2)


def test_new_boot_bytes() -> None:
    def boot(*files: tuple[str, int]) -> dict[str, object]:
        k, i = files
        return {"boot": [{"kernel": {"sha256": k[0], "size": k[1]}, "initrd": {"sha256": i[0], "size": i[1]}}]}

    v1 = boot(("k1", 8_000), ("i1", 70_000))
    assert new_boot_bytes(v1, boot(("k1", 8_000), ("i2", 71_000))) == 71_000  # the same kernel, a new initrd
    assert new_boot_bytes(v1, v1) == 0
    assert new_boot_bytes({"packages": []}, v1) == 78_000  # an image without boot files before
