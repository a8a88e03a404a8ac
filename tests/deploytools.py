"""Helpers for the deploy tests: constants of the test images, running `rpmimg`, reading state."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jsonschemas import validate

from fixtures.command import clean_env, run
from fixtures.signing import SigningKey, gnupg_home

V0, V1, V2 = "20261121.1", "20261122.1", "20261123.1"
# New content of one small file in "sizes" 1.1; its 1 MiB file stays the same.
NEW_CONTENT = bytes(range(256)) * 16 + b"x"
ZSTD_DATA = b"changed\n" * 9000
# Data of the files whose content changes from V1 to V2, in whole blocks.
CHANGED_BYTES = sum((n + 4095) // 4096 * 4096 for n in (len(NEW_CONTENT), len(ZSTD_DATA), 4))


def sign_all(paths: list[Path], key: SigningKey) -> None:
    """Add header signatures to many RPMs with one rpmsign run."""
    gpg = shutil.which("gpg") or "gpg"
    with gnupg_home(key) as home:
        run(
            ["rpmsign", "--addsign", "--define", f"_gpg_path {home}", "--define", f"__gpg {gpg}",
             "--define", f"_gpg_name {key.fingerprint}", *paths],
            env=clean_env(home, {"GNUPGHOME": os.fspath(home)}),
        )


@dataclass(frozen=True)
class Images:
    """Two published versions of image "demo" and the RPMs they were made from."""

    output: Path
    v1: Path  # manifest paths
    v2: Path
    v1_rpms: tuple[Path, ...]
    v2_rpms: tuple[Path, ...]
    key: SigningKey
    changed: tuple[str, ...]  # names of packages that differ between v1 and v2
    v0: Path  # an older, one-package version
    unsigned: Path  # a signed manifest listing a package without a header signature


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> dict[str, object]:
        value: dict[str, object] = json.loads(self.out)
        return value


def rpmimg(
    *args: str | os.PathLike[str], env: Mapping[str, str] | None = None, check: bool = True,
    timeout: float = 120,
) -> Result:
    """Run the real `rpmimg` command."""
    argv = [sys.executable, "-m", "rpmimg", *map(os.fspath, args)]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=timeout,
                          check=False)
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    words = [os.fspath(a) for a in args]
    if "--json" in words and proc.returncode in (0, 1, 2, 70):
        # Whatever happened, --json answers with one object its verb's schema describes.
        validate(words, proc.stdout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rpmimg {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return result


def deploy(sysroot: Path, source: str | os.PathLike[str], key: SigningKey, *extra: str,
           env: Mapping[str, str] | None = None, check: bool = True) -> Result:
    return rpmimg("deploy", "--sysroot", sysroot, "--keyring", key.public, "--json",
                  source, *extra, env=env, check=check)


def state_of(sysroot: Path) -> dict[str, object]:
    value: dict[str, object] = json.loads((sysroot / "@rpmimg/state.json").read_text())
    return value
