"""Driving the real rpmimg end to end on the corpus: signing key, compose v1 and v2, deploy.

Each step runs `.venv/bin/rpmimg` as a user would and is timed with its peak
memory; the metrics in metrics_image.py read the outcomes.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.context import Context
from benchmarks.measure import Timing, run_timed

IMAGE = "bench"


@dataclass(frozen=True)
class SigningKey:
    secret: Path
    public: Path


def make_signing_key(where: Path) -> SigningKey:
    """A throwaway OpenPGP key (no passphrase) for signing manifests."""
    home = where / "gnupg"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    gpg = ["gpg", "--homedir", os.fspath(home), "--batch", "--pinentry-mode", "loopback",
           "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "rpmimg bench <bench@localhost>", "ed25519",
                    "sign", "never"], check=True, capture_output=True)
    secret, public = where / "secret.asc", where / "public.asc"
    secret.write_bytes(subprocess.run([*gpg, "--armor", "--export-secret-keys"], check=True,
                                      capture_output=True).stdout)
    public.write_bytes(subprocess.run([*gpg, "--armor", "--export"], check=True,
                                      capture_output=True).stdout)
    return SigningKey(secret, public)


def definition(names: list[str], repos: dict[str, Path], image: str = IMAGE) -> str:
    """An image definition (TOML) installing every corpus package from the given repositories."""
    pkgs = ",\n  ".join(json.dumps(n) for n in names)
    text = f'name = "{image}"\narch = "x86_64"\npackages = [\n  {pkgs},\n]\n'
    for name, path in repos.items():
        text += f'\n[[repo]]\nname = "{name}"\nurl = "file://{path}"\n'
    return text


@dataclass(frozen=True)
class Composed:
    manifest: Path
    data: dict[str, Any]
    timing: Timing


def compose(ctx: Context, key: SigningKey, output: Path, repos: dict[str, Path],
            tag: str, image: str = IMAGE) -> Composed:
    """`rpmimg compose` of the corpus into output; returns the new version's manifest."""
    defn = ctx.work / f"{tag}.toml"
    defn.write_text(definition(ctx.package_names(), repos, image))
    t = run_timed([[*ctx.rpmimg, "compose", os.fspath(defn), "-o", os.fspath(output),
                    "--sign-key", os.fspath(key.secret)]])
    manifest = (output / "images" / image / "latest").resolve() / "manifest.json"
    return Composed(manifest, json.loads(manifest.read_text()), t)


def deploy(ctx: Context, key: SigningKey, sysroot: Path, manifest: str, *extra: str) -> Timing:
    """`rpmimg deploy MANIFEST --sysroot S --keyring K [EXTRA...]` (manifest: a path or URL)."""
    # The corpus RPMs carry no header signatures (Debian signs its archive, not each .deb);
    # the signed manifest still pins every package's sha256.
    return run_timed([[*ctx.rpmimg, "deploy", manifest, "--sysroot", os.fspath(sysroot),
                       "--keyring", os.fspath(key.public), "--allow-unsigned-packages", *extra]])


def deployments(ctx: Context, sysroot: Path) -> list[dict[str, Any]]:
    """`rpmimg status --json` of a sysroot, as a list of deployments."""
    out = subprocess.run([*ctx.rpmimg, "status", "--sysroot", os.fspath(sysroot), "--json"],
                         check=True, capture_output=True, text=True).stdout
    data = json.loads(out)
    if isinstance(data, dict):
        data = data.get("deployments", [])
    return list(data)


def default_usr(ctx: Context, sysroot: Path) -> Path:
    """The /usr tree of the sysroot's default deployment."""
    deps = deployments(ctx, sysroot)
    chosen = next((d for d in deps if d.get("default")), deps[-1] if deps else None)
    if chosen is None or "path" not in chosen:
        raise RuntimeError(f"rpmimg status shows no deployment with a path in {sysroot}")
    return Path(chosen["path"])


def new_packages_zstd_bytes(old: dict[str, Any], new: dict[str, Any]) -> tuple[int, int]:
    """(count, bytes of the .rpm.zst copies) of packages in new that old does not have."""
    have = {p["sha256"] for p in old["packages"]}
    fresh = [p for p in new["packages"] if p["sha256"] not in have]
    return len(fresh), sum(int(p["zstd"]["size"]) for p in fresh)
