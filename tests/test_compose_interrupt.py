"""kill -9 at random points of a compose never leaves a half-published version or a broken latest."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.outputs import assert_consistent
from fixtures.repos import build_repo, solver_universe
from fixtures.signing import generate_key
from solver.publish import ImageStore

pytestmark = pytest.mark.skipif(
    shutil.which("rpmbuild") is None or shutil.which("createrepo_c") is None
    or shutil.which("gpg") is None,
    reason="needs rpmbuild, createrepo_c and gpg",
)

# Two definitions composed in turn, so that every run that completes publishes and prunes.
PACKAGE_SETS = (["app", "scripted"], ["bash", "kernel-default", "sendmail"])


def write_definitions(tmp_path: Path, repo: Path) -> list[Path]:
    paths = []
    for i, packages in enumerate(PACKAGE_SETS):
        path = tmp_path / f"def{i}.toml"
        quoted = ", ".join(f'"{p}"' for p in packages)
        path.write_text(f'name = "demo"\narch = "x86_64"\npackages = [{quoted}]\n'
                        f'[[repo]]\nname = "main"\nurl = "{repo.as_uri()}/"\n')
        paths.append(path)
    return paths


def compose_cmd(definition: Path, output: Path, key: Path) -> list[str]:
    return [sys.executable, "-m", "rpmimg", "compose", os.fspath(definition), "-o",
            os.fspath(output), "--sign-key", os.fspath(key), "--keep", "2"]


@pytest.mark.slow
def test_kill_at_random_points(tmp_path: Path) -> None:
    build_repo(solver_universe(), tmp_path / "repo")
    key = generate_key(tmp_path / "key")
    definitions = write_definitions(tmp_path, tmp_path / "repo")
    output = tmp_path / "out"
    # How long one whole compose takes here sets the range the kills are spread over: one
    # whose packages are in the pool already, as after the loop's first two runs (timing the
    # first compose, which transcodes every package, let most later runs finish unkilled).
    for definition in definitions:
        subprocess.run(compose_cmd(definition, tmp_path / "timing", key.secret), check=True,
                       capture_output=True)
    started = time.monotonic()
    subprocess.run(compose_cmd(definitions[0], tmp_path / "timing", key.secret), check=True,
                   capture_output=True)
    duration = time.monotonic() - started
    # A failure names its seed; RPMIMG_KILL_SEED=<seed> replays the same kill times.
    seed = int(os.environ.get("RPMIMG_KILL_SEED") or int.from_bytes(os.urandom(4)))
    print(f"kill times drawn with RPMIMG_KILL_SEED={seed}")
    rng = random.Random(seed)
    killed = completed = 0
    for i in range(16):
        cmd = compose_cmd(definitions[i % 2], output, key.secret)
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        delay = rng.uniform(0.3 * duration, 1.05 * duration)
        try:
            process.wait(timeout=delay)
            completed += 1
            assert process.returncode == 0, process.stderr.read() if process.stderr else ""
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed += 1
        if process.stderr:
            process.stderr.close()
        try:
            assert_consistent(output)
            store = ImageStore(output)
            for version in store.versions("demo"):
                assert (output / "images/demo" / version / "manifest.json.asc").is_file()
        except AssertionError as e:
            raise AssertionError(f"run {i} with RPMIMG_KILL_SEED={seed} (killed at {delay:.2f} s "
                                 f"unless done): {e}") from e
    # Whatever the kills left behind, the next run cleans up and publishes.
    final = subprocess.run(compose_cmd(definitions[0], output, key.secret), capture_output=True,
                           text=True)
    assert final.returncode == 0, final.stderr
    again = subprocess.run(compose_cmd(definitions[0], output, key.secret), capture_output=True,
                           text=True, check=True)
    assert "no change" in again.stdout
    assert_consistent(output)
    leftovers = [p for p in (output / "images/demo").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert killed >= 4, (f"only {killed} of 16 runs were killed ({completed} completed; "
                         f"RPMIMG_KILL_SEED={seed})")
