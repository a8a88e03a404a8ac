"""Metadata bombs: compose refuses them quickly, in little memory (measured in a child process)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import zstandard
from hostile import (
    Scene,
    metadata_path,
    needs_repo_tools,
    set_metadata,
    tree_digest,
)

from solver.repodata import MAX_METADATA, MAX_TEXT

pytestmark = needs_repo_tools

BOMB_SIZE = 2 << 30
PEAK_LIMIT = 200 << 20
PACKAGE = (b'<package type="rpm"><name>filler</name><arch>noarch</arch>'
           b'<version epoch="0" ver="1" rel="1"/><summary>s</summary></package>\n')


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """primary.xml.gz of well-formed package entries inflating to 2 GiB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = PACKAGE * ((1 << 20) // len(PACKAGE))
    parts = [packer.compress(b'<?xml version="1.0"?>\n<metadata packages="0">\n')]
    written = 0
    while written < BOMB_SIZE:
        parts.append(packer.compress(block))
        written += len(block)
    parts.append(packer.compress(b"</metadata>\n") + packer.flush())
    return b"".join(parts)


# Runs rpmimg in the child and records the child's own peak RSS (VmHWM belongs to the
# address space exec made, so unlike ru_maxrss it does not count the forking parent's).
MEASURED = """
import sys
from rpmimg.cli import main
try:
    code = main(sys.argv[2:])
finally:
    status = open("/proc/self/status").read()
    peak = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    open(sys.argv[1], "w").write(peak)
sys.exit(code)
"""


def _measured(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """Run a Python program or rpmimg in a child; its result, wall time and peak RSS (bytes)."""
    peak_file = tmp / "peak"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", MEASURED, os.fspath(peak_file), *args],
                            capture_output=True, text=True, check=False, timeout=300)
    return result, time.monotonic() - start, int(peak_file.read_text()) * 1024


def _compose_measured(scene: Scene, definition: Path) -> tuple[subprocess.CompletedProcess[str], float, int]:
    return _measured(scene.tmp, "compose", os.fspath(definition), "-o", os.fspath(scene.out))


def _error_line(child: subprocess.CompletedProcess[str]) -> str:
    err = child.stderr
    lines = [line for line in err.splitlines() if line.startswith("rpmimg:")]
    assert child.returncode == 1 and len(lines) == 1, err
    return lines[0].removeprefix("rpmimg: error: ")


@pytest.mark.parametrize("open_size", [True, False], ids=["open-size", "no-open-size"])
def test_gzip_bomb_is_refused_in_little_memory(scene: Scene, gzip_bomb: bytes,
                                               open_size: bool) -> None:
    """A ~10 MB primary.xml.gz inflating to 2 GiB; repomd's checksum matches it (unsigned repo)."""
    honest = metadata_path(scene.repo).stat().st_size
    set_metadata(scene.repo, "primary", gzip_bomb, open_size=honest * 20 if open_size else None)
    child, elapsed, peak = _compose_measured(scene, scene.definition(
        scene.repo.as_uri() + "/", gpgkey=None))
    limit = honest * 20 if open_size else MAX_METADATA
    assert _error_line(child) == ("repository 'main' primary metadata: decompresses to more "
                                  f"than {limit} bytes")
    print(f"\ngzip bomb {len(gzip_bomb)} bytes -> {BOMB_SIZE}, {'with' if open_size else 'no'} "
          f"open-size: refused in {elapsed:.1f}s, peak RSS {peak / 2**20:.0f} MiB")
    assert peak < PEAK_LIMIT
    assert elapsed < (30 if not open_size else 10)
    assert tree_digest(scene.decoy) == scene.decoy_before
    assert not list(scene.out.glob(".cache/repos/*/rpmimg-md-*"))


def test_zstd_description_bomb_is_refused_in_little_memory(scene: Scene) -> None:
    """A tiny zstd primary whose one description is 512 MiB."""
    packer = zstandard.ZstdCompressor(level=19).compressobj()
    parts = [packer.compress(b'<?xml version="1.0"?>\n<metadata packages="1">'
                             b'<package type="rpm"><name>tool</name><description>')]
    chunk = b"A" * (1 << 20)
    for _ in range(512):
        parts.append(packer.compress(chunk))
    parts.append(packer.compress(b"</description></package></metadata>\n") + packer.flush())
    bomb = b"".join(parts)
    set_metadata(scene.repo, "primary", bomb, open_size=(512 << 20) + 200,
                 href="repodata/primary.xml.zst")
    child, elapsed, peak = _compose_measured(scene, scene.definition(
        scene.repo.as_uri() + "/", gpgkey=None))
    assert _error_line(child) == ("repository 'main' primary metadata: holds a text of more than "
                                  f"{MAX_TEXT} bytes without markup")
    print(f"\nzstd bomb {len(bomb)} bytes -> 512 MiB description: refused in {elapsed:.1f}s, "
          f"peak RSS {peak / 2**20:.0f} MiB")
    assert peak < PEAK_LIMIT and elapsed < 10


def test_the_peak_measurement_sees_a_child_s_memory(tmp_path: Path) -> None:
    """The same measurement sees 300 MiB that the child allocates, and not the parent's."""
    ballast = bytearray(300 << 20)  # in this process only
    ballast[::4096] = b"x" * len(ballast[::4096])
    idle, _, small = _measured(tmp_path, "--help")
    assert idle.returncode == 0 and small < 150 << 20
    code = "import sys; from rpmimg.cli import main; b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096])"
    fat = subprocess.run([sys.executable, "-c", MEASURED.replace("from rpmimg.cli import main",
                                                                 code), os.fspath(tmp_path / "peak"),
                          "--help"], capture_output=True, text=True, check=False)
    assert fat.returncode == 0, fat.stderr
    assert int((tmp_path / "peak").read_text()) * 1024 > 300 << 20
    del ballast
