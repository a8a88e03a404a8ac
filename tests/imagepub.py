"""A test-only image publisher following the manifest contract (README, "Image manifest").

It stands in for `rpmimg compose` until that lands: transcode each RPM into a
content-addressed pool, write manifest.json, sign it with gpg, point `latest` at it.
No solving: the package list is given.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import zstandard

from deploy.sources.base import sha256_file
from fixtures.signing import SigningKey, gnupg_home


def sign_file(path: Path, key: SigningKey) -> Path:
    """Write path.asc, an armoured detached signature by key."""
    sig = path.with_name(path.name + ".asc")
    with gnupg_home(key) as home:
        subprocess.run(
            ["gpg", "--batch", "--yes", "--armor", "--detach-sign", "--local-user",
             key.fingerprint, "--output", os.fspath(sig), os.fspath(path)],
            env={"GNUPGHOME": os.fspath(home), "PATH": os.environ["PATH"]},
            check=True, capture_output=True,
        )
    return sig


def publish(
    output: Path, name: str, version: str, rpms: Sequence[Path], key: SigningKey | None,
    *, block_size: int = 4096, zstd: bool = True,
) -> Path:
    """Publish rpms as image `name` `version` under output; returns the manifest path."""
    from rpmextents import ExtentsPackage, transcode

    pool = output / "pool"
    version_dir = output / "images" / name / version
    version_dir.mkdir(parents=True, exist_ok=True)
    packages, scriptlets, triggers, outside = [], [], [], {}
    for rpm in rpms:
        tmp = pool / "incoming.rpm"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        result = transcode(rpm, tmp, block_size=block_size)
        entry_name = f"{result.sha256}-{result.name}-{result.version}-{result.release}.{result.arch}.rpm"
        dest = pool / result.sha256[:2] / entry_name
        dest.parent.mkdir(exist_ok=True)
        os.replace(tmp, dest)
        with ExtentsPackage.open(dest) as pkg:
            if pkg.has_scriptlets:
                scriptlets.append(pkg.nevra)
            if pkg.has_triggers:
                triggers.append(pkg.nevra)
            out = [e.path for e in pkg.entries() if not e.path.startswith("/usr/") and e.path != "/usr"]
            if out:
                outside[pkg.nevra] = out
        record = {
            "name": result.name, "epoch": result.epoch, "version": result.version,
            "release": result.release, "arch": result.arch, "sha256": result.sha256,
            "size": result.size, "header_sha256": result.header_sha256,
            "block_size": result.block_size,
            "source_checksum": "sha256:" + sha256_file(rpm), "source_size": rpm.stat().st_size,
            "location": os.path.relpath(dest, version_dir),
        }
        if zstd:
            zdest = dest.with_name(dest.name + ".zst")
            with open(dest, "rb") as fin, open(zdest, "wb") as fout:
                zstandard.ZstdCompressor(level=3).copy_stream(fin, fout)
            record["zstd"] = {
                "location": os.path.relpath(zdest, version_dir),
                "sha256": sha256_file(zdest), "size": zdest.stat().st_size,
            }
        packages.append(record)
    manifest = {
        "format": 1, "name": name, "version": version, "arch": "x86_64",
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "inputs_sha256": hashlib.sha256(json.dumps(sorted(map(str, rpms))).encode()).hexdigest(),
        "block_size": block_size, "packages": packages,
        "report": {"scriptlets": scriptlets, "triggers": triggers, "outside_usr": outside},
    }
    path = version_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    if key is not None:
        sign_file(path, key)
    latest = output / "images" / name / "latest"
    tmp_link = latest.with_name(".latest.tmp")
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(version)
    os.replace(tmp_link, latest)
    return path
