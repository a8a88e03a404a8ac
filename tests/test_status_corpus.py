"""`status` of a sysroot holding the benchmark corpus image (a Debian system converted to
RPMs, benchmarks/debcorpus.py) fits 80 columns, plain and --verbose."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploytools import deploy, rpmimg
from imagepub import publish

from fixtures.build import signing_key

from conftest import loop_btrfs

IMAGE = "debian-12-bench-corpus"


def _corpus_base() -> Path:
    from benchmarks.debcorpus import cache_root

    done = sorted(cache_root().glob("*/corpus.json"))
    if not done:
        pytest.skip(f"no benchmark corpus cached under {cache_root()}"
                    " (python -m benchmarks.debcorpus builds it; RPMIMG_BENCH_CACHE picks another)")
    return done[-1].parent / "base"


@pytest.mark.slow
def test_status_of_the_corpus_image_fits_80_columns(tmp_path: Path) -> None:
    rpms = sorted(_corpus_base().rglob("*.rpm"))
    key = signing_key()
    out = tmp_path / "out"
    v1 = publish(out, IMAGE, "20261202.1", rpms, key)
    v2 = publish(out, IMAGE, "20261202.2", rpms, key)
    with loop_btrfs(4 << 30) as sysroot:
        deploy(sysroot, v1, key, "--allow-unsigned-packages")
        deploy(sysroot, v2, key, "--allow-unsigned-packages")
        rpmimg("pin", "--sysroot", sysroot, "1")
        text = rpmimg("status", "--sysroot", sysroot).out.splitlines()
        verbose = rpmimg("status", "--sysroot", sysroot, "--verbose").out.splitlines()
    assert len(text) == 3, text  # a header and the two deployments
    assert text[0].split()[:3] == ["ID", "IMAGE", "VERSION"]
    assert all(IMAGE in line and str(len(rpms)) in line for line in text[1:]), text
    assert all(len(line) <= 80 for line in text), [(len(line), line) for line in text]
    # --verbose adds lines (source, signer, kernel); all but the source URL, which is as
    # long as it is, fit too.
    assert len(verbose) > len(text)
    wide = [line for line in verbose if len(line) > 80 and not line.lstrip().startswith("source")]
    assert not wide, wide
