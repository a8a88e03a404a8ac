"""The file names of a published image, relative to the output directory a server serves.

    pool/<sha[:2]>/<sha256>-<name>-<version>-<release>.<arch>.rpm     extents RPM
    pool/<sha[:2]>/<sha256>-<name>-<version>-<release>.<arch>.rpm.zst zstd copy (one stream)
    pool/<sha[:2]>/<sha256>-<name>-<version>-<release>.<arch>.rpm.seek.zst  seekable zstd form
    pool/boot/<sha256>-vmlinuz-<kver>, pool/boot/<sha256>-initrd-<kver>   boot files
    pool/boot/<inputs>-initrd-<kver>.json      what that initrd was built from
    images/NAME/VERSION/manifest.json   (+ manifest.json.asc, changes.json)
    images/NAME/latest -> VERSION

A manifest names its packages by `location`, relative to its own path or URL.
"""

from __future__ import annotations

MANIFEST = "manifest.json"
SIGNATURE = MANIFEST + ".asc"
CHANGES = "changes.json"
LATEST = "latest"
IMAGES = "images"
POOL = "pool"
ZSTD_SUFFIX = ".zst"
SEEKABLE_SUFFIX = ".seek.zst"
# From images/NAME/VERSION/manifest.json back up to the output directory.
TO_OUTPUT = "../../../"


def pool_path(sha256: str, nvra: str) -> str:
    """The output-relative path of the extents RPM with this sha256 and name-version-release.arch."""
    return f"{POOL}/{sha256[:2]}/{sha256}-{nvra}.rpm"


def zstd_path(pool_entry: str) -> str:
    """The path of the zstd copy beside a pool entry."""
    return pool_entry + ZSTD_SUFFIX


def seekable_path(pool_entry: str) -> str:
    """The path of the seekable zstd form (rpmextents.seekable) beside a pool entry."""
    return pool_entry + SEEKABLE_SUFFIX


def location_of(relpath: str) -> str:
    """The manifest-relative location of an output-relative path."""
    return TO_OUTPUT + relpath


BOOT = POOL + "/boot"


def boot_path(sha256: str, kind: str, kernel_version: str) -> str:
    """The output-relative path of a kernel ("vmlinuz") or initrd ("initrd") by its sha256."""
    return f"{BOOT}/{sha256}-{kind}-{kernel_version}"


def boot_inputs_path(inputs: str, kernel_version: str) -> str:
    """The output-relative path of the record of an initrd's inputs (server side only)."""
    return f"{BOOT}/{inputs}-initrd-{kernel_version}.json"
