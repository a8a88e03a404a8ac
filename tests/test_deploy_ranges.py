"""Updates over HTTP fetch only the frames of changed files, from a real server on
127.0.0.1 that logs every request; mirrors that lie are caught; kill -9 resumes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from deploytools import Images, deploy, state_of
from rangehttpd import RangeServer, range_server

from rpmextents import ExtentsPackage
from rpmextents.index import align_up
from rpmextents.seekable import FrameTable, read_table

pytest_plugins = ("deployenv",)


def _packages(manifest: Path) -> dict[str, dict[str, object]]:
    return {p["name"]: p for p in json.loads(manifest.read_text())["packages"]}


def _url(server: RangeServer, output: Path, manifest: Path) -> str:
    return f"{server.url}/{manifest.relative_to(output)}"


def _pool(output: Path, manifest: Path, location: str) -> Path:
    return (manifest.parent / location).resolve()


def _digests(output: Path, manifest: Path) -> set[str]:
    found: set[str] = set()
    for p in _packages(manifest).values():
        with ExtentsPackage.open(_pool(output, manifest, str(p["location"]))) as pkg:
            found |= {e.digest for e in pkg.entries() if e.extent is not None}
    return found


def _allowed(images: Images, name: str) -> tuple[str, set[tuple[int, int]], set[tuple[int, int]]]:
    """(seekable form's file name, compressed ranges a client may ask, those it must ask) for
    package name of v2: the table, frame 0 and the frames of files v1 has no copy of."""
    p = _packages(images.v2)[name]
    zst = _pool(images.output, images.v2, str(p["seekable"]["location"]))  # type: ignore[index]
    old = _digests(images.output, images.v1)
    with open(zst, "rb") as f:
        table: FrameTable = read_table(f, int(str(p["size"])))[0]
    size = zst.stat().st_size
    allowed = {(table.compressed_size, size - 1), (0, table.frames[0].csize - 1)}
    needed: set[tuple[int, int]] = set()
    with ExtentsPackage.open(_pool(images.output, images.v2, str(p["location"]))) as pkg:
        for e in pkg.entries():
            if e.extent is not None and e.digest not in old:
                end = align_up(e.extent.offset + e.extent.length, pkg.block_size)
                for fr in table.covering(e.extent.offset, end):
                    needed.add((fr.coffset, fr.coffset + fr.csize - 1))
    return zst.name, allowed | needed, needed


def _covered(asked: list[tuple[int, int]], pieces: set[tuple[int, int]]) -> bool:
    """Whether every byte asked lies in one of the pieces (merged neighbours allowed)."""
    for start, end in asked:
        pos = start
        while pos <= end:
            piece = next((p for p in pieces if p[0] <= pos <= p[1]), None)
            if piece is None:
                return False
            pos = piece[1] + 1
    return True


def _store_is_verified(sysroot: Path) -> None:
    for path in (sysroot / "@rpmimg/store").glob("*/*.rpm"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem


def test_update_fetches_only_ranges_of_changed_files(sysroot: Path, images: Images) -> None:
    with range_server(images.output) as server:
        first = deploy(sysroot, _url(server, images.output, images.v1), images.key).json()
        assert first["outcome"] == "deployed"
        # A first deployment fetches each package whole, as its one-stream zstd copy: the
        # fewest bytes (the seekable form's per-file frames compress worse).
        assert all(rng is None and not path.endswith(".seek.zst") for path, rng in server.requests)
        assert sum(path.endswith(".rpm.zst") for path, _ in server.requests) == len(
            _packages(images.v1))
        server.requests.clear()
        result = deploy(sysroot, _url(server, images.output, images.v2), images.key).json()
    assert result["outcome"] == "deployed"
    v2 = _packages(images.v2)
    whole, ranged = 0, []
    for name in ("sizes", "payload-zstd"):
        zst, allowed, needed = _allowed(images, name)
        asked = server.ranged(zst)
        assert asked and all(rng is not None for p, rng in server.requests if p.endswith(zst))
        assert _covered(asked, allowed), (name, asked, allowed)
        one_size = int(str(v2[name]["zstd"]["size"]))  # type: ignore[index]
        whole += one_size
        one_stream = str(v2[name]["zstd"]["location"]).rsplit("/", 1)[-1]  # type: ignore[index]
        got_whole = [rng for p, rng in server.requests if p.endswith(one_stream)]
        framing = {r for r in allowed if r not in needed}  # the table and frame 0
        if got_whole:
            # The changed files' frames would have cost at least the one-stream copy: only
            # the table and frame 0 were asked, then the one stream, in one plain request.
            assert got_whole == [None] and set(asked) <= framing, (name, asked)
            assert sum(b - a + 1 for a, b in framing | needed) >= one_size
        else:
            # Only the frames of the changed files (and the table and frame 0), fewer bytes
            # than the one-stream copy.
            ranged.append(name)
            assert _covered(sorted(needed), set(asked))
            assert sum(b - a + 1 for a, b in asked) < one_size
    assert "sizes" in ranged  # its one changed file is a small part of it
    # The new package has nothing to share: fetched whole, its one-stream copy in one plain
    # request, and nothing of its seekable form.
    newcomer = str(v2["newcomer"]["zstd"]["location"]).rsplit("/", 1)[-1]  # type: ignore[index]
    assert [rng for p, rng in server.requests if p.endswith(newcomer)] == [None]
    newcomer_seek = str(v2["newcomer"]["seekable"]["location"]).rsplit("/", 1)[-1]  # type: ignore[index]
    assert not any(p.endswith(newcomer_seek) for p, _ in server.requests)
    whole += int(str(v2["newcomer"]["zstd"]["size"]))  # type: ignore[index]
    assert int(str(result["transferred_bytes"])) < whole
    _store_is_verified(sysroot)


def test_a_server_without_range_support_serves_whole_packages(sysroot: Path, images: Images) -> None:
    with range_server(images.output, ranges=False) as server:
        deploy(sysroot, _url(server, images.output, images.v1), images.key)
        server.requests.clear()
        result = deploy(sysroot, _url(server, images.output, images.v2), images.key).json()
    assert result["outcome"] == "deployed"
    zst, _, _ = _allowed(images, "sizes")
    asked = [rng for p, rng in server.requests if p.endswith(zst)]
    assert asked and None not in asked  # a range of the seekable form was tried ...
    one_stream = str(_packages(images.v2)["sizes"]["zstd"]["location"]).rsplit("/", 1)[-1]  # type: ignore[index]
    # ... then the whole package fetched, as its one-stream copy.
    assert [rng for p, rng in server.requests if p.endswith(one_stream)] == [None]
    _store_is_verified(sysroot)


def test_a_mirror_serving_corrupt_ranges_is_caught(sysroot: Path, images: Images) -> None:
    with range_server(images.output, corrupt_ranges=".zst") as bad, \
            range_server(images.output) as good:
        deploy(sysroot, _url(bad, images.output, images.v1), images.key)
        bad.requests.clear()
        result = deploy(sysroot, _url(bad, images.output, images.v2), images.key,
                        "--mirror", _url(good, images.output, images.v2)).json()
    assert result["outcome"] == "deployed"
    zst, allowed, _ = _allowed(images, "sizes")
    # Every range was asked of the bad mirror first, refused, and asked of the good one.
    assert bad.ranged(zst) and good.ranged(zst)
    assert set(good.ranged(zst)) <= set(bad.ranged(zst))
    assert _covered(good.ranged(zst), allowed)
    assert not [p for p, rng in good.requests if p.endswith(zst) and rng is None]
    _store_is_verified(sysroot)


def test_kill_9_in_the_middle_of_a_ranged_fetch_resumes(sysroot: Path, images: Images,
                                                        tmp_path: Path) -> None:
    log = tmp_path / "checkpoints"
    with range_server(images.output) as server:
        deploy(sysroot, _url(server, images.output, images.v1), images.key)
        before = state_of(sysroot)
        source = _url(server, images.output, images.v2)
        # Killed right after a range arrived. Not by its count: the fetch workers' checkpoints
        # interleave, and a run killed after another package was stored has fewer of them.
        killed = deploy(sysroot, source, images.key, check=False,
                        env={"RPMIMG_KILL_AT": "fetched range", "RPMIMG_CHECKPOINT_LOG": os.fspath(log)})
        assert killed.code == -9, killed.err
        assert log.read_text().splitlines()[-1].endswith(" fetched range")
        assert state_of(sysroot) == before
        result = deploy(sysroot, source, images.key).json()
    assert result["outcome"] == "deployed"
    assert not list((sysroot / "@rpmimg").rglob("*.ranged"))
    _store_is_verified(sysroot)


def test_the_mirror_list_beside_the_versions_is_used(sysroot: Path, images: Images) -> None:
    listing = images.v2.parent.parent / "mirrors.txt"
    with range_server(images.output, corrupt_ranges=".zst") as bad, \
            range_server(images.output) as good:
        listing.write_text(f"# mirrors of this output\n\nftp://nowhere/\n{good.url}/\n")
        try:
            deploy(sysroot, _url(bad, images.output, images.v1), images.key)
            result = deploy(sysroot, _url(bad, images.output, images.v2), images.key).json()
        finally:
            listing.unlink()
    assert result["outcome"] == "deployed"
    zst, allowed, _ = _allowed(images, "sizes")
    assert ("/images/demo/mirrors.txt", None) in bad.requests
    assert good.ranged(zst) and _covered(good.ranged(zst), allowed)
    _store_is_verified(sysroot)
