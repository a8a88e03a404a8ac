"""Kernels and initrds made by compose: published, pinned by the signed manifest, reused or rebuilt.

The slow tests use the bootable test image (fixtures.bootimage): real Debian packages,
the image's own dracut run in compose's sandbox. Its output is cached across runs
(~/.cache/rpmimg/bootimage), so dracut runs only when the image's inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fixtures.bootimage import BROKEN_DRACUT_CONF, BootImage, Unavailable, build_bootimage
from imagespec.published import boot_inputs_path, boot_path
from imagespec.signature import verify_detached
from rpmextents import ExtentsPackage
from rpmextents.keyring import Keyring
from solver.initrd import (
    ImagePackage,
    _reusable,
    inputs_digest,
    kernel_versions,
    missing_tools,
)
from solver.publish import ImageStore


def test_kernel_versions_come_from_usr_lib_modules_only() -> None:
    files = {
        "kernel-6.1": ["/usr/lib/modules/6.1.0-57-amd64/vmlinuz",
                       "/usr/lib/modules/6.1.0-57-amd64/kernel/fs/btrfs/btrfs.ko"],
        "kernel-6.2": ["/usr/lib/modules/6.2.0-1/vmlinuz"],
        "decoy": ["/boot/vmlinuz-6.3", "/usr/lib/modules/6.4/sub/vmlinuz",
                  "/usr/lib/modules/../vmlinuz", "/usr/lib/modules/6.5/vmlinuz.old"],
    }
    assert kernel_versions(files) == ["6.1.0-57-amd64", "6.2.0-1"]
    assert kernel_versions({"app": ["/usr/bin/app"]}) == []


def test_boot_files_need_dracut_and_depmod_in_the_image() -> None:
    kernel = {"kernel": ["/usr/lib/modules/6.1/vmlinuz"]}
    assert missing_tools(kernel) == ["dracut", "depmod"]
    assert missing_tools({**kernel, "dracut": ["/usr/bin/dracut"], "kmod": ["/sbin/depmod"]}) == []
    assert missing_tools({**kernel, "dracut": ["/usr/share/dracut"], "kmod": ["/usr/sbin/depmod"]}) \
        == ["dracut"]


def test_inputs_digest_changes_with_any_input_and_needs_every_package() -> None:
    digests = {"kernel": "a" * 64, "dracut": "b" * 64, "systemd": "c" * 64}
    base = inputs_digest("6.1", ["kernel", "dracut"], digests)
    assert base is not None
    assert inputs_digest("6.1", ["dracut", "kernel", "kernel"], digests) == base
    assert inputs_digest("6.2", ["kernel", "dracut"], digests) != base
    assert inputs_digest("6.1", ["kernel", "dracut", "systemd"], digests) != base
    assert inputs_digest("6.1", ["kernel", "dracut"], {**digests, "kernel": "d" * 64}) != base
    assert inputs_digest("6.1", ["kernel", "gone"], digests) is None


# --- the bootable image -------------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> BootImage:
    for tool in ("apt-get", "createrepo_c", "rpmbuild", "gpg", "unshare", "cpio"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    try:
        return build_bootimage()
    except Unavailable as e:
        pytest.skip(f"Debian packages unavailable: {e}")


def _initrd_listing(path: Path) -> list[str]:
    data = subprocess.run(["gzip", "-dc", str(path)], capture_output=True, check=True).stdout
    out = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True)
    return out.stdout.decode().splitlines()


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _kernel_from_package(image: BootImage, kver: str) -> bytes:
    manifest = image.manifest("v1")
    for p in manifest.packages:
        path = Path(os.path.normpath(image.manifest_path("v1").parent / p.location))
        with ExtentsPackage.open(path) as pkg:
            for entry in pkg.entries():
                if entry.path == f"/usr/lib/modules/{kver}/vmlinuz" and entry.extent is not None:
                    return b"".join(pkg.read_extent(entry.extent))
    raise AssertionError("no package has the kernel")


@pytest.mark.slow
def test_compose_publishes_kernel_and_initrd_pinned_by_the_signed_manifest(image: BootImage) -> None:
    path = image.manifest_path("v1")
    verify_detached(path.read_bytes(), path.with_name("manifest.json.asc").read_bytes(),
                    Keyring.from_files([image.key.public]), "v1 manifest")
    manifest = image.manifest("v1")
    assert len(manifest.boot) == 1
    entry = manifest.boot[0]
    assert entry.kernel_version.startswith("6.1.")
    for kind, pinned in (("kernel", entry.kernel), ("initrd", entry.initrd)):
        published = image.boot_file("v1", kind)
        assert published.stat().st_size == pinned.size
        assert _sha256(published) == pinned.sha256
        assert published.is_relative_to(image.output / "pool" / "boot")
    assert _kernel_from_package(image, entry.kernel_version) == image.boot_file("v1", "kernel").read_bytes()
    listing = _initrd_listing(image.boot_file("v1", "initrd"))
    modules = f"usr/lib/modules/{entry.kernel_version}"
    assert f"{modules}/modules.dep" in listing  # depmod ran on the composed tree
    assert any(f.startswith(f"{modules}/kernel/fs/btrfs/btrfs.ko") for f in listing)
    assert any(f.startswith(f"{modules}/kernel/drivers/block/virtio_blk.ko") for f in listing)
    assert "usr/lib/systemd/system/rpmimg-etc-sync.service" in listing
    assert any(f.endswith("/initrd.target.wants/rpmimg-etc-sync.service") for f in listing)
    assert "usr/lib/rpmimg/rpmimg-etc-sync.sh" in listing
    assert "usr/bin/sha256sum" in listing and "usr/bin/comm" in listing
    assert "etc/cmdline.d/50-rpmimg.conf" in listing
    # rd.emergency=reboot needs a reboot command (the image has no systemd-sysv links).
    assert "usr/sbin/reboot" in listing or "usr/bin/reboot" in listing, listing
    assert not any("bootimage" in f for f in listing)  # nothing of the release package
    # The pool keeps what published versions use.
    store = ImageStore(image.output)
    used = store.referenced()
    assert os.path.relpath(image.boot_file("v1", "initrd"), image.output) in used
    assert boot_inputs_path(entry.inputs, entry.kernel_version) in used


@pytest.mark.slow
def test_initrd_is_reused_when_its_inputs_are_unchanged_and_rebuilt_when_they_change(
        image: BootImage) -> None:
    v1, v2, v3, v4 = (image.manifest(v).boot[0] for v in ("v1", "v2", "v3", "v4"))
    # v2 and v3 change bootimage-release, which puts nothing into the initrd.
    assert v2 == v1 and v3 == v1
    assert image.manifest("v2").packages != image.manifest("v1").packages
    # v4's bootimage-release adds dracut configuration: new inputs, a new initrd.
    assert v4.inputs != v1.inputs and v4.initrd.sha256 != v1.initrd.sha256
    assert v4.kernel == v1.kernel
    listing = _initrd_listing(image.boot_file("v4", "initrd"))
    assert not any("/fs/btrfs/btrfs.ko" in f for f in listing), BROKEN_DRACUT_CONF
    assert "etc/cmdline.d/01-default.conf" in listing  # its kernel_cmdline: rd.timeout=20
    # The record names the packages that went in; a new kernel package means new inputs.
    record = json.loads((image.output / boot_inputs_path(v1.inputs, v1.kernel_version)).read_text())
    kernel_package = next(n for n in record["packages"] if n.startswith("linux-image-6.1"))
    assert any(n.startswith("systemd-") for n in record["packages"])
    assert not any(n.startswith("bootimage-release") for n in record["packages"])
    digests = {str(p.ident): p.header_sha256 for p in image.manifest("v1").packages}
    assert inputs_digest(v1.kernel_version, record["packages"], digests) == v1.inputs
    changed = {**digests, kernel_package: "0" * 64}
    assert inputs_digest(v1.kernel_version, record["packages"], changed) != v1.inputs


def _write_record(store: ImageStore, inputs: str, kver: str, record: object) -> None:
    rel = boot_inputs_path(inputs, kver)
    store.out.makedirs(os.path.dirname(rel))
    store.out.write(rel, json.dumps(record).encode())


def test_reuse_needs_a_sound_record_and_its_files(tmp_path: Path) -> None:
    kver = "6.1.0-57-amd64"
    packages = [ImagePackage("kernel-1-1.x86_64", tmp_path / "unused.rpm", "a" * 64)]
    files = {"kernel-1-1.x86_64": [f"/usr/lib/modules/{kver}/vmlinuz"]}
    inputs = inputs_digest(kver, ["kernel-1-1.x86_64"], {"kernel-1-1.x86_64": "a" * 64})
    assert inputs is not None
    store = ImageStore(tmp_path / "out")
    with store.locked():
        blobs = {kind: f"{kind} bytes".encode() for kind in ("vmlinuz", "initrd")}
        shas = {kind: hashlib.sha256(b).hexdigest() for kind, b in blobs.items()}
        good = {"packages": ["kernel-1-1.x86_64"],
                **{k: {"sha256": shas[k], "size": len(blobs[k])} for k in blobs}}
        _write_record(store, inputs, kver, good)
        # The record's files are missing: nothing to reuse.
        assert _reusable(store, None, kver, packages, files) is None
        for kind, data in blobs.items():
            store.out.write(boot_path(shas[kind], kind, kver), data)
        entry = _reusable(store, None, kver, packages, files)
        assert entry is not None and entry.inputs == inputs
        assert entry.initrd.sha256 == shas["initrd"] and entry.kernel.size == len(blobs["vmlinuz"])
        # A changed package: new inputs, no reuse.
        changed = [ImagePackage("kernel-1-1.x86_64", tmp_path / "unused.rpm", "b" * 64)]
        assert _reusable(store, None, kver, changed, files) is None
        # Hostile or broken records are ignored, never trusted or fatal.
        for bad in ("not json", [], {"packages": "kernel"}, {**good, "initrd": {"sha256": "../x", "size": 1}},
                    {**good, "initrd": {"sha256": shas["initrd"], "size": 999}}):
            store.out.unlink(boot_inputs_path(inputs, kver))
            _write_record(store, inputs, kver, bad)
            assert _reusable(store, None, kver, packages, files) is None, bad
