"""`rpmimg install` into a disk image file: GPT, systemd-boot and the first deployment's entry
in a FAT ESP written with mtools (no vfat driver needed), the deployment on the btrfs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from bootimages import KVER, publish_bootable
from deploytools import Images, rpmimg

from deploy.esp import FatImageEsp
from deploy.install import BOOT_LOADER, ESP_TYPE

pytest_plugins = ("deployenv",)

pytestmark = pytest.mark.root

KERNEL, INITRD = b"a kernel\n" * 1000, b"an initrd\n" * 1000


@pytest.fixture(scope="module")
def bootable(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("installimages")
    empty = [p for p in images.v1_rpms if p.name.startswith("empty-")]
    return publish_bootable(out, "1", empty, images.key, {KVER: (KERNEL, INITRD)})


def _mtools(*argv: str) -> bytes:
    return subprocess.run(argv, check=True, capture_output=True,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout


def test_install_makes_a_bootable_disk_image(bootable: Path, images: Images, tmp_path: Path) -> None:
    if not BOOT_LOADER.is_file() or subprocess.run(["which", "mformat"], capture_output=True).returncode:
        pytest.skip("needs systemd-boot-efi and mtools")
    disk = tmp_path / "disk.img"
    out = rpmimg("install", bootable, "--disk", disk, "--size", "1G", "--keyring", images.key.public,
                 "--json").json()
    assert disk.stat().st_size == 1 << 30
    table = json.loads(subprocess.run(["sfdisk", "--json", disk], capture_output=True, check=True,
                                      text=True).stdout)["partitiontable"]
    assert table["label"] == "gpt" and table["partitions"][0]["type"] == ESP_TYPE
    esp = FatImageEsp(disk, int(out["esp"]["offset_bytes"]))  # type: ignore[index, call-overload]
    assert esp.read("EFI/BOOT/BOOTX64.EFI") == BOOT_LOADER.read_bytes()
    assert esp.read("EFI/systemd/systemd-bootx64.efi") == BOOT_LOADER.read_bytes()
    entries = esp.listdir("loader/entries")
    assert entries == [f"rpmimg-1-{KVER}+3.conf"]
    text = (esp.read(f"loader/entries/{entries[0]}") or b"").decode()
    fields = dict(line.split(" ", 1) for line in text.splitlines())
    assert esp.read(fields["linux"].lstrip("/")) == KERNEL
    assert esp.read(fields["initrd"].lstrip("/")) == INITRD
    assert "mount.usrflags=subvol=/@rpmimg/deployments/1,ro" in fields["options"]
    # The btrfs partition holds the deployment, reachable through a loop device over its range.
    root = out["root"]
    dev = subprocess.run(["losetup", "--find", "--show", "--offset", str(root["offset_bytes"]),  # type: ignore[index]
                          "--sizelimit", str(root["size_bytes"]), disk],  # type: ignore[index]
                         capture_output=True, check=True, text=True).stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        uuid = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", dev], capture_output=True,
                              check=True, text=True).stdout.strip()
        assert f"mount.usr=UUID={uuid}" in fields["options"]
        subprocess.run(["mount", dev, mnt], check=True)
        try:
            state = json.loads((mnt / "@rpmimg/state.json").read_text())
            assert state["default"] == "1"
            assert (mnt / "@rpmimg/deployments/1").is_dir()
        finally:
            subprocess.run(["umount", mnt], check=True)
    finally:
        subprocess.run(["losetup", "--detach", dev], check=True)


def test_install_refuses_a_missing_disk_without_size(bootable: Path, images: Images, tmp_path: Path) -> None:
    r = rpmimg("install", bootable, "--disk", tmp_path / "nope.img", "--keyring", images.key.public,
               check=False)
    assert r.code == 1 and "give --size" in r.err and not (tmp_path / "nope.img").exists()


def test_fat_image_esp_round_trip(tmp_path: Path) -> None:
    if subprocess.run(["which", "mformat"], capture_output=True).returncode:
        pytest.skip("needs mtools")
    img = tmp_path / "esp.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    _mtools("mformat", "-i", os.fspath(img), "-F", "::")
    esp = FatImageEsp(img)
    free = esp.free()
    esp.write("loader/entries/rpmimg-1-6.1+3.conf", b"title x\n")
    esp.write("rpmimg/" + "a" * 64, b"k" * 100000)
    assert esp.listdir("loader/entries") == ["rpmimg-1-6.1+3.conf"]
    assert esp.read("rpmimg/" + "a" * 64) == b"k" * 100000
    assert esp.size("rpmimg/" + "a" * 64) == 100000 and esp.free() < free
    esp.rename("loader/entries/rpmimg-1-6.1+3.conf", "loader/entries/rpmimg-1-6.1.conf")
    assert esp.listdir("loader/entries") == ["rpmimg-1-6.1.conf"]
    esp.remove("rpmimg/" + "a" * 64)
    assert esp.read("rpmimg/" + "a" * 64) is None and esp.listdir("rpmimg") == []
