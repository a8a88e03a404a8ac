"""`deploy --download-only`: the version's packages fetched and verified into the store, and
nothing else changed; the deploy that follows fetches nothing and builds the same deployment.
Entries a run adds are marked (deploy.storemarks) as it adds them, and a mark still vouches
for nothing that changed since: an entry changed after the download is fetched again."""

from __future__ import annotations

import json
import os
from pathlib import Path

from deploytools import Images, deploy, rpmimg
from hostile import flip_byte

pytest_plugins = ("deployenv",)

MARKS = "@rpmimg/store-checked.json"


def _marks(sysroot: Path) -> dict[str, str]:
    value: dict[str, str] = json.loads((sysroot / MARKS).read_text())["marks"]
    return value


def _entry(sysroot: Path, sha: str) -> Path:
    return sysroot / "@rpmimg/store" / sha[:2] / f"{sha}.rpm"


def _manifest_shas(manifest: Path) -> set[str]:
    return {p["sha256"] for p in json.loads(manifest.read_text())["packages"]}


def _system_files(sysroot: Path) -> dict[str, bytes]:
    """Everything a deploy changes outside the store: state, boot selection, subvolumes."""
    top = sysroot / "@rpmimg"
    found = {name: (top / name).read_bytes() for name in ("state.json", "usr-default.conf")
             if (top / name).exists()}
    for d in ("deployments", "roots"):
        found[d] = "\n".join(sorted(p.name for p in (top / d).iterdir())).encode()
    return found


def _download(sysroot: Path, manifest: Path, images: Images, *extra: str) -> dict[str, object]:
    return deploy(sysroot, manifest, images.key, "--download-only", *extra).json()


def test_download_only_stores_and_marks_the_packages_and_changes_nothing_else(
    sysroot: Path, images: Images
) -> None:
    deploy(sysroot, images.v1, images.key)
    before = _system_files(sysroot)
    new = _manifest_shas(images.v2) - _manifest_shas(images.v1)
    assert new and not any(_entry(sysroot, sha).exists() for sha in new)

    got = _download(sysroot, images.v2, images)
    assert got["fetched"] == len(new) and got["transferred_bytes"] > 0  # type: ignore[operator]
    assert got["deployment"] == {"id": None, "image": "demo", "version": "20261123.1"}
    assert _system_files(sysroot) == before
    assert all(_entry(sysroot, sha).is_file() for sha in new)
    assert new <= set(_marks(sysroot))
    assert not list((sysroot / "@rpmimg/staging/downloads").glob("*"))

    again = _download(sysroot, images.v2, images)  # everything is there already
    assert again["fetched"] == 0

    done = deploy(sysroot, images.v2, images.key).json()
    assert done["outcome"] == "deployed" and done["fetched"] == 0 and done["build"] == "update"
    assert rpmimg("verify", "--sysroot", sysroot).code == 0

    # A version a deployment has: nothing to fetch, and the output names that deployment.
    text = rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public,
                  "--download-only", images.v2).out
    assert text.strip() == f"demo 20261123.1 is already deployment {done['deployment']['id']}: nothing fetched"  # type: ignore[index]


def test_an_entry_changed_after_its_download_is_fetched_again(sysroot: Path, images: Images) -> None:
    deploy(sysroot, images.v1, images.key)
    _download(sysroot, images.v2, images)
    sha = sorted(_manifest_shas(images.v2) - _manifest_shas(images.v1))[0]
    entry = _entry(sysroot, sha)
    clean = entry.read_bytes()
    st = entry.stat()
    flip_byte(entry, st.st_size // 2)
    os.utime(entry, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and times as they were

    done = deploy(sysroot, images.v2, images.key).json()
    assert done["fetched"] == 1 and entry.read_bytes() == clean
    assert rpmimg("verify", "--sysroot", sysroot).code == 0
    assert rpmimg("verify", "--sysroot", sysroot, "--store").code == 0


def test_a_deploy_marks_the_entries_it_fetched(sysroot: Path, images: Images) -> None:
    # The first full deploy after this one need not hash them: the marks vouch for them.
    deploy(sysroot, images.v1, images.key)
    assert _manifest_shas(images.v1) <= set(_marks(sysroot))


def test_a_refused_download_changes_nothing(sysroot: Path, images: Images) -> None:
    deploy(sysroot, images.v2, images.key)
    before = _system_files(sysroot)
    store = sorted(p.name for p in (sysroot / "@rpmimg/store").glob("*/*"))
    r = rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public, "--download-only",
               images.v1, check=False)
    lines = r.err.strip().splitlines()
    assert r.code == 1 and len(lines) == 1 and "older" in lines[0], r.err
    assert _system_files(sysroot) == before
    assert sorted(p.name for p in (sysroot / "@rpmimg/store").glob("*/*")) == store
