"""The README's quick start, run verbatim against a fresh playground, and its example definition."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import btrfs_unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEFAULT_PLAYGROUND = "/var/tmp/rpmimg-playground"


def _block(after: str, lang: str) -> str:
    """The first ```lang block after the line `after` in the README."""
    text = README.read_text()
    start = text.index(after)
    found = re.compile(rf"^```{lang}\n(.*?)^```$", re.S | re.M).search(text, start)
    assert found, f"no {lang} block after {after!r}"
    return found.group(1)


@pytest.mark.slow
def test_quick_start_runs_verbatim(tmp_path: Path) -> None:
    reason = btrfs_unavailable_reason()
    if reason:
        pytest.skip(reason)
    script = _block("## Quick start", "sh")
    play = tmp_path / "play"
    env = {**os.environ, "PLAYGROUND": os.fspath(play)}
    try:
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out = done.stdout
        assert "deployed demo" in out and "rolled back: deployment 1 is the default" in out
        assert "upgraded   libfoo.x86_64 1.0-1 -> 1.1-1" in out
        assert (play / "my-images/images/demo/latest/manifest.json.asc").is_file()

        # The example definition of *Definition*, as written, with the playground's path.
        example = _block("This one works against the playground", "toml")
        (play / "example.toml").write_text(example.replace(DEFAULT_PLAYGROUND, os.fspath(play)))
        composed = subprocess.run(
            [sys.executable, "-m", "rpmimg", "compose", "example.toml", "-o", "example-images",
             "--sign-key", "keys/secret.asc"], cwd=play, capture_output=True, text=True, check=False)
        assert composed.returncode == 0, composed.stderr
        assert "example: published" in composed.stdout
    finally:
        subprocess.run(["umount", os.fspath(play / "sysroot")], capture_output=True, check=False)
