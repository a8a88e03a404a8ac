"""The manifest's `boot` section: kernels and initrds pinned by the signed manifest, parsed strictly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imagespec.errors import ManifestError
from imagespec.manifest import (
    BootEntry,
    BootFile,
    CurationReport,
    ImageManifest,
    ManifestPackage,
    parse,
)

_KVER = "6.1.0-57-amd64"


def _manifest(boot: tuple[BootEntry, ...] = ()) -> ImageManifest:
    pkg = ManifestPackage("foo", None, "1.0", "1", "x86_64", "ab" * 32, 8192, "ab" * 32, 4096,
                          "sha256:" + "ab" * 32, 100, "../../../pool/ab/foo.rpm")
    return ImageManifest("demo", "20261122.1", "x86_64", "now", "ab" * 32, 4096, (pkg,),
                         CurationReport(), boot)


def _entry(kver: str = _KVER) -> BootEntry:
    return BootEntry(kver, BootFile(f"../../../pool/boot/{'cd' * 32}-vmlinuz-{kver}", "cd" * 32, 8 << 20),
                     BootFile(f"../../../pool/boot/{'ef' * 32}-initrd-{kver}", "ef" * 32, 30 << 20),
                     "12" * 32)


def test_boot_section_round_trips_and_is_absent_without_a_kernel() -> None:
    plain = _manifest()
    assert "boot" not in json.loads(plain.dumps())
    assert parse(plain.dumps()).boot == ()
    booted = _manifest((_entry(), _entry("6.1.0-58-amd64")))
    assert parse(booted.dumps()) == booted
    assert parse(booted.dumps()).dumps() == booted.dumps()


def _with_boot(change: Any) -> bytes:
    data = json.loads(_manifest((_entry(),)).dumps())
    change(data)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(boot={}), "field 'boot' should be list"),
        (lambda m: m.update(boot=[7]), "boot entry #0: should be an object"),
        (lambda m: m["boot"][0].pop("initrd"), f"boot entry {_KVER}: missing field 'initrd'"),
        (lambda m: m["boot"][0].update(kernel_version="../../etc"), "field 'kernel_version' has an invalid"),
        (lambda m: m["boot"][0].update(kernel_version=".."), "field 'kernel_version' has an invalid"),
        (lambda m: m["boot"][0].update(kernel_version="a/b"), "field 'kernel_version' has an invalid"),
        (lambda m: m["boot"][0].update(kernel_version="x" * 200), "field 'kernel_version' has an invalid"),
        # systemd-boot would read these ends of the entry's file name as a tries counter
        (lambda m: m["boot"][0].update(kernel_version="6.1.0+3"), "ends like a boot tries counter"),
        (lambda m: m["boot"][0].update(kernel_version="6.1.0+1-2"), "ends like a boot tries counter"),
        (lambda m: m["boot"][0].update(kernel_version=6), "field 'kernel_version' should be str"),
        (lambda m: m["boot"][0].update(inputs="nope"), "field 'inputs' has an invalid value"),
        (lambda m: m["boot"][0].update(kernel="x"), "field 'kernel' should be dict"),
        (lambda m: m["boot"][0]["kernel"].update(sha256="AB" * 32), "kernel: field 'sha256' has an invalid"),
        (lambda m: m["boot"][0]["initrd"].update(size=-1), "initrd: field 'size' is negative"),
        (lambda m: m["boot"][0]["initrd"].update(size=0), "initrd: field 'size' 0 is not the size"),
        (lambda m: m["boot"][0]["initrd"].update(size=1 << 40), "is not the size of a initrd"),
        (lambda m: m["boot"][0]["initrd"].update(size=True), "field 'size' should be int"),
        (lambda m: m["boot"][0]["kernel"].update(location=""), "kernel: field 'location' has an invalid"),
        (lambda m: m["boot"][0]["kernel"].update(location="a\0b"), "field 'location' has an invalid"),
        (lambda m: m["boot"][0]["kernel"].update(location=["x"]), "field 'location' should be str"),
        (lambda m: m["boot"].append(m["boot"][0]), "kernel version is listed twice"),
        (lambda m: m["boot"][0].update(kernel="DEEP"), "nested deeper than 16 levels"),
    ],
)
def test_boot_section_parser_names_what_is_wrong(change: Any, message: str) -> None:
    text = _with_boot(change).replace(b'"DEEP"', b"[" * 10_000 + b"]" * 10_000)
    with pytest.raises(ManifestError, match=message):
        parse(text, "m.json")


@pytest.mark.parametrize("kver", ["6.1.0+", "5.15.0+rt3", "6.1.0-13-amd64", "6.12.0+1a"])
def test_kernel_versions_with_a_plus_that_is_no_counter_are_taken(kver: str) -> None:
    assert parse(_with_boot(lambda m: m["boot"][0].update(kernel_version=kver)), "m.json").boot[0].kernel_version == kver
