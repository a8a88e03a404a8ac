"""The seekable form (rpmextents.seekable), its manifest fields, and host.http's exact
byte-range download against honest and hostile servers on 127.0.0.1."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import zstandard
from hostile_httpd import Mode, Rule, serve
from rangehttpd import range_server

from fixtures.build import fixture_packages
from host.http import DownloadError, Limits, NoRanges, download_range
from imagespec.errors import ManifestError
from imagespec.manifest import parse
from rpmextents import ExtentsPackage
from rpmextents.errors import FormatError
from rpmextents.index import align_up
from rpmextents.seekable import FrameTable, compress, decompress_frame, parse_table, read_table
from rpmextents.transcode import transcode

FAST = Limits(attempts=2, backoff=0.0, idle_timeout=5.0, deadline_base=10.0)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, FrameTable]:
    work = tmp_path_factory.mktemp("seekable")
    extents = work / "sizes.rpm"
    transcode(fixture_packages()["sizes"], extents)
    form = work / "sizes.rpm.zst"
    with open(form, "wb") as out:
        table = compress(extents, out, level=3, workers=2)
    return extents, form, table


def test_the_form_is_one_zstd_stream_and_each_file_has_its_own_frames(
        packed: tuple[Path, Path, FrameTable]) -> None:
    extents, form, table = packed
    data, zst = extents.read_bytes(), form.read_bytes()
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zst), read_across_frames=True)
    assert reader.read(len(data) + 1) == data
    assert read_table(io.BytesIO(zst), len(data))[0] == table
    with ExtentsPackage.open(extents) as pkg:
        assert table.frames[0].size == pkg.index.data_offset
        files = [e for e in pkg.entries() if e.extent is not None and e.extent.length]
        assert len(files) > 3
        for e in files:
            assert e.extent is not None
            end = align_up(e.extent.offset + e.extent.length, pkg.block_size)
            frames = table.covering(e.extent.offset, end)
            # Fetched alone, a file's frames give exactly its aligned data.
            assert frames[0].offset == e.extent.offset and frames[-1].offset + frames[-1].size == end
            plain = b"".join(decompress_frame(zst[f.coffset:f.coffset + f.csize], f) for f in frames)
            assert plain == data[e.extent.offset:end]


@pytest.mark.parametrize("damage", ["truncated", "count", "magic", "footer", "sizes", "zero"])
def test_a_hostile_table_is_refused(packed: tuple[Path, Path, FrameTable], damage: str) -> None:
    extents, form, table = packed
    good = table.pack()
    size, zsize = extents.stat().st_size, form.stat().st_size
    bad = bytearray(good)
    if damage == "truncated":
        bad = bad[:-9]
    elif damage == "count":
        bad[16:20] = (0xFFFFFFFF).to_bytes(4, "little")
    elif damage == "magic":
        bad[8] ^= 1
    elif damage == "footer":
        bad[-1] ^= 1
    elif damage == "sizes":
        bad[24] ^= 1  # the first frame's decompressed size
    else:
        bad[20:28] = b"\0" * 8
    assert parse_table(good, size, zsize) == table
    with pytest.raises(FormatError):
        parse_table(bytes(bad), size, zsize)
    with pytest.raises(FormatError):
        parse_table(good, size + 1, zsize)
    frame = table.frames[1]
    with pytest.raises(FormatError):
        decompress_frame(form.read_bytes()[frame.coffset:frame.coffset + frame.csize - 1], frame)


def _manifest_with(zstd: dict[str, object], key: str = "zstd") -> bytes:
    package = {"name": "a", "epoch": None, "version": "1", "release": "1", "arch": "x86_64",
               "sha256": "a" * 64, "size": 10, "header_sha256": "b" * 64, "block_size": 4096,
               "source_checksum": "sha256:00", "source_size": 5, "location": "a.rpm",
               key: zstd}
    return json.dumps({"format": 1, "name": "x", "version": "1", "arch": "x86_64", "created": "",
                       "inputs_sha256": "c" * 64, "block_size": 4096, "packages": [package],
                       "report": {"scriptlets": [], "triggers": [], "outside_usr": {}}}).encode()


def test_the_manifest_pins_the_table_strictly() -> None:
    base = {"location": "a.rpm.zst", "sha256": "d" * 64, "size": 100}
    z = parse(_manifest_with({**base, "table_size": 40, "table_sha256": "e" * 64})).packages[0].zstd
    assert z is not None and (z.table_size, z.table_sha256) == (40, "e" * 64)
    assert parse(parse(_manifest_with(base)).dumps()).packages[0].zstd.table_size is None  # type: ignore[union-attr]
    for bad in ({"table_size": 40}, {"table_sha256": "e" * 64}, {"table_size": 100, "table_sha256": "e" * 64},
                {"table_size": -1, "table_sha256": "e" * 64}, {"table_size": 4, "table_sha256": "E"},
                {"tables": 1}):
        with pytest.raises(ManifestError):
            parse(_manifest_with({**base, **bad}))
    # A package's `seekable` copy is pinned the same way, and must have its table fields.
    pinned = {**base, "table_size": 40, "table_sha256": "e" * 64}
    s = parse(parse(_manifest_with(pinned, "seekable")).dumps()).packages[0].seekable
    assert s is not None and (s.location, s.table_size, s.table_sha256) == ("a.rpm.zst", 40, "e" * 64)
    for bad in ({}, {"table_size": 40}, {"table_sha256": "e" * 64},
                {"table_size": 100, "table_sha256": "e" * 64}):
        with pytest.raises(ManifestError):
            parse(_manifest_with({**base, **bad}, "seekable"))


def test_download_range_gets_exactly_the_bytes_asked(tmp_path: Path) -> None:
    data = bytes(range(256)) * 64
    (tmp_path / "f").write_bytes(data)
    with range_server(tmp_path) as server:
        assert download_range(server.url + "/f", 1000, 3000, limits=FAST) == data[1000:4000]
        assert server.requests[-1] == ("/f", "bytes=1000-3999")
    with range_server(tmp_path, ranges=False) as server, pytest.raises(NoRanges):
        download_range(server.url + "/f", 10, 10, limits=FAST)
    for lie, error in (("long", DownloadError), ("shifted", DownloadError), ("short", DownloadError)):
        with range_server(tmp_path, lie=lie) as server, pytest.raises(error) as caught:
            download_range(server.url + "/f", 100, 200, limits=FAST)
        assert "/f" in str(caught.value)


@pytest.mark.parametrize("mode", [Mode.IGNORE_RANGE, Mode.BAD_RANGE, Mode.HUGE, Mode.ENDLESS,
                                  Mode.GZIP_BOMB])
def test_download_range_never_reads_a_hostile_answer(tmp_path: Path, mode: Mode) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100_000)
    with serve(tmp_path, {"/f": Rule(mode, size=1 << 30)}) as hostile:
        with pytest.raises(DownloadError) as caught:
            download_range(hostile.url + "f", 10, 100, limits=FAST)
    # A whole-file answer (200) is refused unread; a 206 for other bytes, unread too.
    assert isinstance(caught.value, NoRanges) == (mode is not Mode.BAD_RANGE)
    assert "bytes 10-109" in str(caught.value) or "ignores Range" in str(caught.value)
    # The server could only fill the socket buffers: a GiB was announced, little sent.
    assert sum(hostile.sent.values()) < 64 << 20
