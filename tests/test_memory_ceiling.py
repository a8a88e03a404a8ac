"""deploy and verify stay within a fixed memory budget, whatever the package sizes.

Run inside a real memory cgroup of 128 MiB (tests/memcgroup.py): a 200,000-file package
(generated once and cached with its published image) and, when it is cached, the
benchmark corpus. The cgroup is shown to bite first: a process asking for more is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from memcgroup import Limited, memory_limit

from benchmarks.context import rpmimg_command
from benchmarks.metrics_scale import published
from fixtures.build import signing_key

from conftest import btrfs_unavailable_reason, loop_btrfs

LIMIT = 128 << 20
FILES = 200_000

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop btrfs, cgroups)")


@pytest.fixture(scope="module")
def limited() -> Iterator[Limited]:
    stack = contextlib.ExitStack()
    try:
        cgroup = stack.enter_context(memory_limit(LIMIT))
    except OSError as e:
        pytest.skip(f"no memory cgroup can be made here: {e}")
    with stack:
        yield cgroup


@pytest.fixture
def big_btrfs() -> Iterator[Path]:
    reason = btrfs_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with loop_btrfs(size=6 << 30) as mnt:
        for d in ("usr", "etc"):
            (mnt / d).mkdir()
        yield mnt


TIMEOUT = 900  # seconds: a run killed in the cgroup must fail the test, never stall the suite


def _rpmimg(limited: Limited, *args: str) -> tuple[int, str]:
    # Output goes to a file, not a pipe: when the kernel kills rpmimg in the cgroup, a hashing
    # worker it forked may live on holding a pipe open; the test waits for rpmimg itself only.
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(limited.command([*rpmimg_command(), *args]), text=True,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = -1
        limited.kill_all()  # whatever it left behind in the cgroup
        proc.wait()
        out.seek(0)
        text = out.read()
    return rc, text if rc != -1 else f"timed out after {TIMEOUT} s (killed):\n{text}"


def test_the_cgroup_limits_memory(limited: Limited) -> None:
    """The limit is real: a process that touches twice the limit does not survive it."""
    hog = f"b = bytearray({2 * LIMIT})\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')"
    proc = limited.run([sys.executable, "-c", hog])
    assert proc.returncode != 0 and "survived" not in proc.stdout


def _deploy(sysroot: Path, image: str, limited: Limited | None) -> tuple[int, str]:
    out = published(FILES)
    argv = ["deploy", os.fspath(out / f"images/{image}/latest"), "--sysroot", os.fspath(sysroot),
            "--keyring", os.fspath(signing_key().public), "--allow-unsigned-packages"]
    if limited is not None:
        return _rpmimg(limited, *argv)
    proc = subprocess.run([*rpmimg_command(), *argv], capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def test_verify_200k_files_in_128_mib(limited: Limited, big_btrfs: Path) -> None:
    rc, output = _deploy(big_btrfs, f"scale{FILES}", None)
    assert rc == 0, output
    state = json.loads((big_btrfs / "@rpmimg/state.json").read_text())
    tree = big_btrfs / "@rpmimg/deployments" / state["default"]
    assert sum(len(names) for _, _, names in os.walk(tree / "lib/scale")) == FILES
    before = limited.oom_kills()
    rc, output = _rpmimg(limited, "verify", "--sysroot", os.fspath(big_btrfs))
    assert rc == 0, output
    assert limited.oom_kills() == before


def test_deploy_200k_files_in_128_mib(limited: Limited, big_btrfs: Path) -> None:
    before = limited.oom_kills()
    rc, output = _deploy(big_btrfs, f"scale{FILES}", limited)
    assert rc == 0, output
    assert limited.oom_kills() == before


def _cached_corpus() -> Path | None:
    from benchmarks.debcorpus import cache_root

    root = cache_root()
    found = sorted(p.parent for p in root.glob("*/corpus.json")) if root.is_dir() else []
    return found[-1] if found else None


def test_deploy_of_the_benchmark_corpus_in_128_mib(limited: Limited, big_btrfs: Path,
                                                   tmp_path: Path) -> None:
    corpus = _cached_corpus()
    if corpus is None:
        pytest.skip("the benchmark corpus is not cached (make bench builds it)")
    key = signing_key()
    names = [p["name"] for p in json.loads((corpus / "corpus.json").read_text())["packages"]]
    definition = tmp_path / "corpus.toml"
    definition.write_text(f'name = "corpus"\narch = "x86_64"\npackages = {json.dumps(names)}\n'
                          f'[[repo]]\nname = "base"\nurl = "file://{corpus / "base"}/"\n')
    out = corpus / "composed"
    if not (out / "images/corpus/latest").exists():
        # Composed once, outside the cgroup: compose's zstd -19 copies need more than 128 MiB.
        subprocess.run([*rpmimg_command(), "compose", os.fspath(definition), "-o", os.fspath(out),
                        "--sign-key", os.fspath(key.secret)], check=True, capture_output=True)
    before = limited.oom_kills()  # test_the_cgroup_limits_memory's hog counts in the same cgroup
    rc, output = _rpmimg(limited, "deploy", os.fspath(out / "images/corpus/latest"),
                         "--sysroot", os.fspath(big_btrfs), "--keyring", os.fspath(key.public),
                         "--allow-unsigned-packages")
    assert rc == 0, output
    rc, output = _rpmimg(limited, "verify", "--sysroot", os.fspath(big_btrfs))
    assert rc == 0, output
    assert limited.oom_kills() == before
