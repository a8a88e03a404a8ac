"""The contract between compose and deploy: package identity, rpm's order, the manifest, the diff."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from imagespec.diff import ChangeKind, package_changes
from imagespec.errors import ManifestError
from imagespec.manifest import CurationReport, ImageManifest, ManifestPackage, ZstdCopy, parse
from imagespec.published import location_of, pool_path, zstd_path
from rpmextents.nevra import Nevra, compare_evr, vercmp

rpm = pytest.importorskip("rpm", reason="needs python3-rpm as the oracle")

# Version strings rpm sees: segments of digits and letters, separators, tildes and carets.
_PART = st.text(alphabet="0123456789abcXYZ.~^_+", min_size=1, max_size=10)
_EPOCH = st.none() | st.integers(min_value=0, max_value=3)


def _rpm_order(a: tuple[int | None, str, str], b: tuple[int | None, str, str]) -> int:
    # labelCompare takes the epoch as text; rpm orders a missing epoch as 0.
    def label(evr: tuple[int | None, str, str]) -> tuple[str | None, str, str]:
        return (None if evr[0] is None else str(evr[0]), evr[1], evr[2])

    result: int = rpm.labelCompare(label(a), label(b))
    return result


@given(_PART, _PART)
@example("1.0~rc1", "1.0")
@example("1.0", "1.0^git1")
@example("1.0~rc1", "1.0~rc1^1")
@example("1.0^", "1.0")
@example("1~", "1")
@example("010", "10")
@example("1.a", "1.1")
@example("1..0", "1.0")
@example("a", "B")
def test_vercmp_is_rpms(a: str, b: str) -> None:
    assert vercmp(a, b) == _rpm_order((None, a, "1"), (None, b, "1"))
    assert vercmp(a, b) == -vercmp(b, a)


@given(_EPOCH, _PART, _PART, _EPOCH, _PART, _PART)
@example(None, "1.0", "1", 0, "1.0", "1")  # Epoch 0 and no epoch are the same version
@example(None, "2.0", "1", 1, "1.0", "1")
@example(0, "1.0", "1~rc", None, "1.0", "1")
def test_evr_order_is_rpms(ea: int | None, va: str, ra: str, eb: int | None, vb: str, rb: str) -> None:
    a, b = (ea, va, ra), (eb, vb, rb)
    assert compare_evr(a, b) == _rpm_order(a, b)
    assert Nevra("p", ea, va, ra, "x86_64").compare(Nevra("p", eb, vb, rb, "noarch")) == compare_evr(a, b)


@settings(max_examples=60)
@given(st.from_regex(r"[a-z][a-z0-9+_-]{0,8}", fullmatch=True), _EPOCH, _PART, _PART,
       st.sampled_from(["x86_64", "noarch", "i686"]))
@example("foo", 0, "1.0", "1", "x86_64")
@example("foo", None, "1.0", "1", "x86_64")
def test_nevra_prints_as_rpm_does(name: str, epoch: int | None, version: str, release: str,
                                  arch: str) -> None:
    hdr = rpm.hdr()
    hdr[rpm.RPMTAG_NAME], hdr[rpm.RPMTAG_VERSION] = name, version
    hdr[rpm.RPMTAG_RELEASE], hdr[rpm.RPMTAG_ARCH] = release, arch
    if epoch is not None:
        hdr[rpm.RPMTAG_EPOCH] = epoch
    ident = Nevra(name, epoch, version, release, arch)
    assert str(ident) == hdr.format("%{NEVRA}")
    assert ident.evr == hdr.format("%{EVR}")
    assert ident.nvra == hdr.format("%{NVRA}")


def test_epoch_zero_is_printed_but_orders_as_none() -> None:
    zero, none = Nevra("foo", 0, "1.0", "1", "x86_64"), Nevra("foo", None, "1.0", "1", "x86_64")
    assert (str(zero), str(none)) == ("foo-0:1.0-1.x86_64", "foo-1.0-1.x86_64")
    assert zero.compare(none) == 0
    assert package_changes([zero], [none]) == ()  # the same version: nothing changed


# --- the diff ----------------------------------------------------------------------------


def test_package_changes_upgrade_downgrade_add_remove_and_multiversion() -> None:
    def n(name: str, version: str, epoch: int | None = None) -> Nevra:
        return Nevra(name, epoch, version, "1", "x86_64")

    old = [n("a", "1.0"), n("b", "2.0"), n("gone", "1"), n("kernel", "6.1"), n("kernel", "6.2")]
    new = [n("a", "1.0~rc1", 1), n("b", "1.9"), n("kernel", "6.2"), n("kernel", "6.3"), n("new", "1")]
    changes = [(c.kind, c.name, c.old, c.new) for c in package_changes(old, new)]
    assert changes == [
        (ChangeKind.UPGRADED, "a", "1.0-1", "1:1.0~rc1-1"),  # the epoch wins over the tilde
        (ChangeKind.DOWNGRADED, "b", "2.0-1", "1.9-1"),
        (ChangeKind.REMOVED, "gone", "1-1", None),
        (ChangeKind.REMOVED, "kernel", "6.1-1", None),
        (ChangeKind.ADDED, "kernel", None, "6.3-1"),
        (ChangeKind.ADDED, "new", None, "1-1"),
    ]


# --- the manifest ------------------------------------------------------------------------

_HEX = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
_NAME = st.from_regex(r"[A-Za-z0-9_+][A-Za-z0-9._+~^-]{0,10}", fullmatch=True)
_EVR = st.from_regex(r"[A-Za-z0-9._+~^]{1,10}", fullmatch=True)
_SIZE = st.integers(min_value=0, max_value=1 << 40)


@st.composite
def manifests(draw: st.DrawFn) -> ImageManifest:
    block_size = draw(st.sampled_from([4096, 65536]))
    names = draw(st.lists(_NAME, unique=True, max_size=4))
    packages = []
    for name in names:
        sha = draw(_HEX)
        entry = pool_path(sha, f"{name}-1-1.x86_64")
        packages.append(ManifestPackage(
            name=name, epoch=draw(_EPOCH), version=draw(_EVR), release=draw(_EVR),
            arch=draw(st.sampled_from(["x86_64", "noarch"])), sha256=sha, size=draw(_SIZE),
            header_sha256=draw(_HEX), block_size=block_size,
            source_checksum="sha256:" + draw(_HEX), source_size=draw(_SIZE),
            location=location_of(entry),
            zstd=draw(st.none() | st.builds(ZstdCopy, st.just(location_of(zstd_path(entry))), _HEX, _SIZE)),
        ))
    nevras = [p.nevra for p in packages]
    report = CurationReport(
        scriptlets=tuple(draw(st.lists(st.sampled_from(nevras))) if nevras else ()),
        triggers=(),
        outside_usr={n: ("/etc/x.conf",) for n in nevras[:1]},
    )
    return ImageManifest(
        name=draw(_NAME), version=draw(_EVR), arch="x86_64", created="2026-11-22T15:00:00Z",
        inputs_sha256=draw(_HEX), block_size=block_size, packages=tuple(packages), report=report,
    )


@given(manifests())
def test_manifest_writer_and_parser_round_trip(m: ImageManifest) -> None:
    data = m.dumps()
    assert parse(data) == m
    assert parse(data).dumps() == data


def _sample() -> dict[str, Any]:
    pkg = ManifestPackage("foo", None, "1.0", "1", "x86_64", "ab" * 32, 8192, "ab" * 32, 4096,
                          "sha256:" + "ab" * 32, 100, "../../../pool/ab/foo.rpm")
    return ImageManifest("demo", "20261122.1", "x86_64", "now", "ab" * 32, 4096, (pkg,),
                         CurationReport()).to_json()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(block_size=3 * 4096), "block size 12288 must be a power of two"),
        (lambda m: m.update(block_size=2 << 20), "block size 2097152 must be a power of two between"),
        (lambda m: m.update(inputs_sha256="x"), "field 'inputs_sha256' has an invalid value"),
        (lambda m: m.pop("report"), "missing field 'report'"),
        (lambda m: m.update(report=[1]), "field 'report' should be dict"),
        (lambda m: m["report"].update(scriptlets=[1]), "report field 'scriptlets' should be a list of strings"),
        (lambda m: m["report"].update(outside_usr={"a": "b"}),
         "report field 'outside_usr' of 'a' should be a list of strings"),
        (lambda m: m.update(report="DEEP"), "nested deeper than 16 levels"),
        (lambda m: m["packages"][0].update(source_checksum="nope"), "field 'source_checksum'"),
        (lambda m: m["packages"][0].update(zstd=[]), "field 'zstd' should be an object"),
        (lambda m: m["packages"][0].update(zstd={"location": "x", "sha256": "ab" * 32, "size": -1}),
         "package foo zstd: field 'size' is negative"),
        (lambda m: m["packages"].append(7), r"package #1: should be an object"),
    ],
)
def test_manifest_parser_names_what_is_wrong(change: Any, message: str) -> None:
    data = _sample()
    change(data)
    text = json.dumps(data).replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ManifestError, match=message):
        parse(text.encode(), "m.json")


def _depth_walked(data: bytes, limit: int) -> bool:
    """check_depth's definition, a byte at a time: whether data nests deeper than limit
    (brackets inside strings don't count; a string never closed runs to the end)."""
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _refused(data: bytes, limit: int) -> bool:
    from imagespec.manifest import check_depth

    try:
        check_depth(data, "m", limit)
    except ManifestError as e:
        assert str(e) == f"m: JSON nested deeper than {limit} levels"
        return True
    return False


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b"\n", b"\\\"", b'\\\\"']),
                max_size=60).map(b"".join), st.integers(0, 4))
@example(b'"[[[[', 1)  # never closed: no structure after it
@example(b'"a\\"[[[', 1)  # an escaped quote does not close it
@example(b'"a\\\\"[[[', 1)  # an escaped backslash does not escape the quote
@example(b'"a\\', 0)  # a string ending in a lone backslash
@example(b'][[[', 1)  # closing first does not go below zero's meaning
def test_check_depth_is_its_definition(data, limit):
    assert _refused(data, limit) == _depth_walked(data, limit)


def test_check_depth_of_hostile_strings_ends():
    """An unclosed string followed by many escaped quotes is read once, not once per quote
    (a regular expression retried at each quote would take quadratic time here)."""
    data = b'"' + b'\\"[' * 200_000
    assert not _refused(data, 1)
    assert _refused(b"[" * 17 + data, 16)
