"""The extents format on rpm's own test packages: transcode, verify, hostile input."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpmextents import (
    CorruptPackageError,
    ExtentsError,
    ExtentsPackage,
    FormatError,
    Keyring,
    UnsupportedPackageError,
    VerifyError,
    index,
)
from rpmextents.transcode import transcode

from conftest import SHARED_CORPUS

# rpm's test suite names its one v3 package "*.rpm-v3"; it is here to be refused.
CORPUS_GOOD = sorted(
    p.name for pattern in ("*.rpm", "*.rpm-v3") for p in SHARED_CORPUS.glob(pattern)
    if "corrupted" not in p.name
) if SHARED_CORPUS.is_dir() else ["(corpus absent)"]
SIGNED_RSA = [
    "hello-2.0-1.x86_64-signed.rpm",
    "hello-2.0-1.x86_64-v3-signed.rpm",
    "hello-2.0-1.x86_64-badima.rpm",
    "hlinktest-1.0-1.noarch-v3sig.rpm",
]
RSA_KEY = "keys/rpm.org-rsa-2048-test.pub"


def corpus_package(corpus: Path, name: str) -> Path:
    path = corpus / name
    if not path.exists():
        pytest.skip(f"{name} not in the corpus")
    return path


def rpm_query(path: Path, fmt: str = "%{NEVRA}") -> str:
    return subprocess.run(
        ["rpm", "-qp", "--nosignature", "--nodigest", "--qf", fmt, os.fspath(path)],
        check=True, capture_output=True, text=True,
    ).stdout


@pytest.fixture(scope="module")
def hlink_extents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An extents RPM with hardlinks and PAYLOADDIGESTALT (rpm's hlinktest)."""
    if not SHARED_CORPUS.is_dir():
        pytest.skip(f"external corpus not present at {SHARED_CORPUS}")
    out = tmp_path_factory.mktemp("hlink") / "hlinktest.rpm"
    transcode(SHARED_CORPUS / "hlinktest-1.0-1.noarch.rpm", out)
    return out


@pytest.mark.parametrize("name", CORPUS_GOOD)
def test_corpus_transcode_keeps_header_and_verifies(shared_corpus: Path, name: str, tmp_path: Path) -> None:
    src = corpus_package(shared_corpus, name)
    out = tmp_path / "out.rpm"
    if name.endswith("-v3"):
        with pytest.raises(UnsupportedPackageError, match="v3"):
            transcode(src, out)
        assert list(tmp_path.iterdir()) == []  # no output, no temporary file
        return
    result = transcode(src, out)
    original = src.read_bytes()
    extents = out.read_bytes()
    with ExtentsPackage.open(out) as pkg:
        end = pkg.header_end
        assert extents[:end] == original[:end]
        assert pkg.index.data_offset % pkg.block_size == 0
        assert len(extents) % pkg.block_size == 0
        report = pkg.verify()
        for entry in pkg.entries():
            if entry.extent is not None:
                assert entry.extent.offset % pkg.block_size == 0
        assert report.nevra == result.nevra
    assert rpm_query(out) == rpm_query(src)
    assert result.sha256 == hashlib.sha256(extents).hexdigest()
    assert result.header_sha256 == hashlib.sha256(original[:end]).hexdigest()


@pytest.mark.parametrize("name", SIGNED_RSA)
def test_signed_corpus_verifies_against_keyring(shared_corpus: Path, name: str, tmp_path: Path) -> None:
    out = tmp_path / "out.rpm"
    transcode(corpus_package(shared_corpus, name), out)
    keyring = Keyring.from_files([shared_corpus / RSA_KEY])
    with ExtentsPackage.open(out) as pkg:
        assert pkg.verify(keyring).signature == "verified"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("hello-2.0-1.x86_64-signed-with-subkey.rpm", "not in the keyring"),
        ("hello-2.0-1.x86_64-signed-with-new-subkey.rpm", "not in the keyring"),
        ("hello-2.0-1.x86_64.rpm", "not signed"),
    ],
)
def test_wrong_key_or_unsigned_fails_with_keyring(
    shared_corpus: Path, name: str, reason: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.rpm"
    transcode(corpus_package(shared_corpus, name), out)
    keyring = Keyring.from_files([shared_corpus / RSA_KEY])
    with ExtentsPackage.open(out) as pkg, pytest.raises(VerifyError, match=reason) as e:
        pkg.verify(keyring)
    assert os.fspath(out) in str(e.value)


def test_corrupt_original_is_refused_and_leaves_nothing(shared_corpus: Path, tmp_path: Path) -> None:
    src = corpus_package(shared_corpus, "hello-2.0-1.x86_64-corrupted.rpm")
    with pytest.raises(CorruptPackageError):
        transcode(src, tmp_path / "out.rpm")
    assert list(tmp_path.iterdir()) == []


def test_payload_corruption_in_original_is_refused(shared_corpus: Path, tmp_path: Path) -> None:
    """A flipped byte in a compressed payload fails decompression or a digest."""
    src = corpus_package(shared_corpus, "hlinktest-1.0-1.noarch-v3sig.rpm")
    data = bytearray(src.read_bytes())
    with open(src, "rb") as f:
        from rpmextents.header import read_prefix

        end = read_prefix(f).header_end
    data[end + (len(data) - end) // 2] ^= 0x40
    bad = tmp_path / "bad.rpm"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptPackageError, match="bad.rpm"):
        transcode(bad, tmp_path / "out.rpm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.rpm"]


@pytest.mark.parametrize("block_size", [4096, 65536])
def test_block_size_is_recorded_and_aligned(hlink_extents: Path, tmp_path: Path, block_size: int) -> None:
    out = tmp_path / "out.rpm"
    transcode(SHARED_CORPUS / "hlinktest-1.0-1.noarch.rpm", out, block_size=block_size)
    with ExtentsPackage.open(out) as pkg:
        assert pkg.block_size == block_size
        assert pkg.index.data_offset % block_size == 0
        assert out.stat().st_size % block_size == 0
        pkg.verify()


def test_bad_block_size_is_refused(hlink_extents: Path, tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="block size 1000"):
        transcode(SHARED_CORPUS / "hlinktest-1.0-1.noarch.rpm", tmp_path / "o.rpm", block_size=1000)


def test_hardlink_data_is_stored_once(hlink_extents: Path) -> None:
    with ExtentsPackage.open(hlink_extents) as pkg:
        entries = [e for e in pkg.entries() if e.hardlink_key is not None]
        assert len(entries) >= 2
        groups: dict[int, set[object]] = {}
        for e in entries:
            groups.setdefault(e.hardlink_key or 0, set()).add(e.extent)
        assert all(len(extents) == 1 for extents in groups.values())
        stored = sum(r.b for r in pkg.index.data_records())
        logical = sum(e.size for e in pkg.entries() if e.extent is not None)
        assert stored < logical


def test_every_single_byte_change_fails_verify(hlink_extents: Path, tmp_path: Path) -> None:
    data = hlink_extents.read_bytes()
    with ExtentsPackage.open(hlink_extents) as pkg:
        start = pkg.header_end
    bad = tmp_path / "bad.rpm"
    survivors = []
    for offset in range(start, len(data)):
        changed = bytearray(data)
        changed[offset] ^= 0x01
        bad.write_bytes(changed)
        try:
            with ExtentsPackage.open(bad) as pkg:
                pkg.verify()
        except ExtentsError as e:
            assert os.fspath(bad) in str(e)
            continue
        survivors.append(offset)
    assert survivors == [], f"changes at offsets {survivors[:10]} went unnoticed"


def _rewrite_head(path: Path, out: Path, **fields: int) -> None:
    """Rewrite index head fields and re-seal the index digest, so only the field is wrong."""
    data = bytearray(path.read_bytes())
    with ExtentsPackage.open(path) as pkg:
        start, end = pkg.header_end, pkg.index.data_offset
    names = ["magic", "version", "flags", "block_size", "index_start", "index_size", "data_offset",
             "data_size", "stream_size", "literal_size", "record_count", "reserved"]
    values = dict(zip(names, index.HEAD.unpack_from(data, start), strict=True))
    values.update(fields)
    index.HEAD.pack_into(data, start, *values.values())
    data[end - 32 : end] = hashlib.sha256(bytes(data[start : end - 32])).digest()
    out.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"version": 2}, "unknown extents format version 2"),
        ({"magic": b"RPMEXTZ\0"}, "bad index magic"),  # type: ignore[dict-item]
        ({"block_size": 3000}, "block size 3000"),
        ({"index_size": 1 << 40}, "data offset|absurd"),
        ({"data_size": 1 << 50}, "truncated or extended|absurd"),
        ({"record_count": 1 << 30}, "absurd"),
        ({"stream_size": 12}, "add up to"),
        ({"flags": 1}, "flags"),
    ],
)
def test_hostile_index_fields_are_refused(
    hlink_extents: Path, tmp_path: Path, fields: dict[str, int], message: str
) -> None:
    bad = tmp_path / "bad.rpm"
    _rewrite_head(hlink_extents, bad, **fields)
    with pytest.raises(FormatError, match=message):
        ExtentsPackage.open(bad)


def test_truncated_and_extended_files_are_refused(hlink_extents: Path, tmp_path: Path) -> None:
    data = hlink_extents.read_bytes()
    with ExtentsPackage.open(hlink_extents) as pkg:
        cuts = [10, 100, pkg.header_end - 1, pkg.header_end + 20, pkg.index.data_offset, len(data) - 1]
    for cut in cuts:
        bad = tmp_path / f"cut{cut}.rpm"
        bad.write_bytes(data[:cut])
        with pytest.raises(FormatError, match=f"cut{cut}.rpm"):
            ExtentsPackage.open(bad)
    longer = tmp_path / "longer.rpm"
    longer.write_bytes(data + b"\0" * 4096)
    with pytest.raises(FormatError, match="truncated or extended"):
        ExtentsPackage.open(longer)


def test_original_rpm_is_not_an_extents_rpm(shared_corpus: Path) -> None:
    with pytest.raises(FormatError, match="not an extents RPM"):
        ExtentsPackage.open(corpus_package(shared_corpus, "hello-2.0-1.x86_64.rpm"))


def test_unsafe_file_names_are_refused(tmp_path: Path, shared_corpus: Path) -> None:
    out = tmp_path / "hello.rpm"
    transcode(corpus_package(shared_corpus, "hello-2.0-1.x86_64.rpm"), out)
    data = out.read_bytes()
    for good, evil in ((b"/usr/share/doc/", b"/usr/share/../."), (b"/usr/bin/\x00", b"/../../b/\x00")):
        assert good in data and len(good) == len(evil)
        bad = tmp_path / "evil.rpm"
        bad.write_bytes(data.replace(good, evil, 1))
        with pytest.raises(FormatError, match="unsafe file name"):
            ExtentsPackage.open(bad)


def test_wrong_magic_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "junk.rpm"
    bad.write_bytes(b"\x7fELF" + bytes(200))
    with pytest.raises(FormatError, match="bad lead magic"):
        ExtentsPackage.open(bad)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_corruption_only_raises_format_errors(hlink_extents: Path, tmp_path: Path, data: st.DataObject) -> None:
    """Random edits anywhere in an extents file: the reader and verifier raise our errors, never crash."""
    original = hlink_extents.read_bytes()
    buf = bytearray(original)
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(buf) - 1), st.integers(0, 255)), min_size=1, max_size=8))
    for offset, value in edits:
        buf[offset] = value
    if data.draw(st.booleans()):
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    path = tmp_path / "fuzz.rpm"
    path.write_bytes(bytes(buf))
    try:
        with ExtentsPackage.open(path) as pkg:
            pkg.verify()
            pkg.entries()
    except ExtentsError:
        return
    # Surviving edits may only touch what no digest covers without a keyring: the lead and the
    # signature header's own signature blobs. The header, index and data must be intact.
    with ExtentsPackage.open(hlink_extents) as pkg:
        header_start = pkg.prefix.header_start
    assert bytes(buf[header_start:]) == original[header_start:]


def test_cli_one_line_errors(tmp_path: Path, shared_corpus: Path) -> None:
    rpmimg = shutil.which("rpmimg") or os.fspath(Path(os.sys.executable).parent / "rpmimg")  # type: ignore[attr-defined]
    v3 = corpus_package(shared_corpus, "hello-1.0-1.x86_64.rpm-v3")
    r = subprocess.run([rpmimg, "pkg", "transcode", os.fspath(v3), "-o", os.fspath(tmp_path / "x.rpm")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "v3" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([rpmimg, "pkg", "verify", "/etc/hostname", os.fspath(v3)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "/etc/hostname: FAILED" in r.stderr and "hello-1.0-1.x86_64.rpm-v3: FAILED" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_transcodes_in_parallel_like_one_at_a_time(tmp_path: Path, shared_corpus: Path) -> None:
    import sys

    from fixtures.build import fixture_packages

    rpmimg = [sys.executable, "-m", "rpmimg", "pkg", "transcode"]
    good = [fixture_packages()[n] for n in ("hardlinks", "sizes", "modes", "symlinks", "caps")]
    outputs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"j{jobs}"
        subprocess.run([*rpmimg, "-j", jobs, *map(os.fspath, good), "-o", os.fspath(out)], check=True,
                       capture_output=True)
        outputs[jobs] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    assert outputs["1"] == outputs["2"] and len(outputs["1"]) == len(good)

    # A bad package among good ones: one line naming it, exit 1, and only complete outputs.
    corrupted = corpus_package(shared_corpus, "hello-2.0-1.x86_64-corrupted.rpm")
    out = tmp_path / "mixed"
    r = subprocess.run([*rpmimg, "-j", "2", *map(os.fspath, good[:2]), os.fspath(corrupted),
                        *map(os.fspath, good[2:]), "-o", os.fspath(out)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "corrupted" in r.stderr and "Traceback" not in r.stderr
    for p in out.iterdir():
        assert outputs["1"][p.name] == hashlib.sha256(p.read_bytes()).hexdigest(), p
    assert r.stdout.count("\n") == 2  # the two packages before the bad one were reported


def test_struct_sizes_are_pinned() -> None:
    assert index.HEAD.size == 72
    assert index.RECORD.size == 24
    assert struct.calcsize("<IiQQ") == 24


def test_gzip_reader_members_padding_and_truncation() -> None:
    import gzip
    import io

    from rpmextents.payload import GzipReader

    first, second = os.urandom(300_000), b"second member " * 1000
    stream = gzip.compress(first) + gzip.compress(second) + b"\0" * 512
    reader = GzipReader(io.BytesIO(stream))
    out = b"".join(iter(lambda: reader.read(65536), b""))
    assert out == first + second
    truncated = GzipReader(io.BytesIO(gzip.compress(first)[:-100]))
    with pytest.raises(EOFError):
        while truncated.read(65536):
            pass


def test_an_index_read_without_its_digest_is_still_checked_for_its_records_and_fill(tmp_path: Path) -> None:
    """parse_records without check_digest (for a file whose whole content was just hashed)
    reads no literal and works out no digest, but refuses a bad record or fill as before;
    with it, a changed literal is caught."""
    from fixtures.build import fixture_packages
    from rpmextents.index import HEAD, RECORD, parse_head, parse_records

    good = tmp_path / "good.rpm"
    transcode(fixture_packages()["sizes"], good)
    data = good.read_bytes()
    with ExtentsPackage.open(good) as pkg:
        start = pkg.header_end
    _, index_size, _, _, count, literal_size = parse_head(data[start:start + HEAD.size], start, len(data))
    literal = start + HEAD.size + RECORD.size * count
    fill = literal + literal_size
    assert fill < start + index_size - 32  # the fixture's index has fill to spoil

    def parsed(blob: bytes, check: bool) -> int:
        index, _ = parse_records(lambda offset, n: blob[offset:offset + n], start, len(blob), check)
        return len(list(index.data_triples()))

    def changed(at: int) -> bytes:
        spoiled = bytearray(data)
        spoiled[at] ^= 0x20
        return bytes(spoiled)

    assert parsed(data, True) == parsed(data, False) > 0
    with pytest.raises(FormatError, match="digest mismatch"):
        parsed(changed(literal), True)
    assert parsed(changed(literal), False) == parsed(data, False)  # not read: the caller hashed it
    for check in (True, False):
        with pytest.raises(FormatError, match="fill is not zero"):
            parsed(changed(fill), check)
        with pytest.raises(FormatError):
            parsed(changed(start + HEAD.size + 4), check)  # a record's file index
