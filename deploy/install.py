"""`rpmimg install`: a new bootable disk (or disk image) with a first deployment.

GPT with an EFI system partition and a btrfs partition; systemd-boot as the removable-media
boot loader (EFI/BOOT/BOOTX64.EFI) and in EFI/systemd/; the image deployed onto the btrfs
and its boot entry in the ESP. Needs no vfat driver: the ESP is formatted with mtools in a
partition-sized file, filled through mtools and copied in; the btrfs partition is reached
through a loop device over its byte range (so a disk image needs no partition devices).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import DeployError
from deploy.esp import FatImageEsp
from deploy.system import System
from host.run import CommandError, run

BOOT_LOADER = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_SIZE = 256 << 20
SECTOR = 512


@dataclass(frozen=True)
class Partition:
    """A partition made by install: where it lies and its UUID."""

    offset: int
    size: int
    uuid: str = ""


@dataclass(frozen=True)
class InstallResult:
    """What install made: the disk's partitions and the first deployment."""

    disk: str
    esp: Partition
    root: Partition
    deployment: str
    entries: tuple[str, ...]
    image: str = ""
    version: str = ""


def _partition(disk: Path, esp_size: int) -> tuple[Partition, Partition]:
    script = (
        "label: gpt\n"
        f"size={esp_size // SECTOR}, type={ESP_TYPE}, name=ESP\n"
        f"type={LINUX_TYPE}, name=rpmimg\n"
    )
    run(["sfdisk", "--quiet", "--wipe", "always", os.fspath(disk)], input=script.encode())
    table = json.loads(run(["sfdisk", "--json", os.fspath(disk)]).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", SECTOR))
    parts = [Partition(int(p["start"]) * sector, int(p["size"]) * sector, str(p.get("uuid", "")))
             for p in table["partitions"]]
    return parts[0], parts[1]


def _prepare_disk(disk: Path, size: int | None) -> None:
    if disk.exists() and disk.is_block_device():
        return
    if size is None and not disk.exists():
        raise DeployError(f"{disk}: does not exist; give --size to create a disk image")
    if size is not None:
        if size < ESP_SIZE + (512 << 20):
            raise DeployError(f"--size {size}: too small for an ESP and a btrfs (at least 768 MiB)")
        with open(disk, "ab") as f:
            f.truncate(size)


@contextlib.contextmanager
def _loop(disk: Path, part: Partition) -> Iterator[str]:
    dev = run(["losetup", "--find", "--show", "--offset", str(part.offset), "--sizelimit",
               str(part.size), os.fspath(disk)]).stdout.decode().strip()
    try:
        yield dev
    finally:
        run(["losetup", "--detach", dev])


def _make_esp(path: Path, size: int, boot_loader: Path) -> FatImageEsp:
    with open(path, "wb") as f:
        f.truncate(size)
    run(["mformat", "-i", os.fspath(path), "-F", "-v", "ESP", "::"], env={"MTOOLS_SKIP_CHECK": "1"})
    esp = FatImageEsp(path)
    esp.write("EFI/BOOT/BOOTX64.EFI", boot_loader)
    esp.write("EFI/systemd/systemd-bootx64.efi", boot_loader)
    esp.write("loader/loader.conf", b"timeout 0\nconsole-mode keep\neditor no\n")
    return esp


def _mount_esp(system: System, deployment_id: str, esp: Partition) -> None:
    """The new system mounts its ESP on /efi (where bootctl finds it for later deploys)."""
    fstab = system.layout.root_of(deployment_id) / "etc/fstab"
    old = fstab.read_text() if fstab.exists() else ""
    line = f"PARTUUID={esp.uuid.lower()} /efi vfat umask=0077,nofail 0 2\n"
    if esp.uuid and line not in old:
        from host.files import write_atomically

        write_atomically(fstab, (old + ("" if old.endswith("\n") or not old else "\n") + line).encode())


def _set_cmdline(system: System, deployment_id: str, cmdline: str) -> None:
    """Write the new root's /etc/kernel/cmdline and rewrite the entry with it."""
    from deploy import bootcheck
    from host.files import write_atomically

    etc_kernel = system.layout.root_of(deployment_id) / "etc/kernel"
    etc_kernel.mkdir(parents=True, exist_ok=True)
    write_atomically(etc_kernel / "cmdline", (" ".join(cmdline.split()) + "\n").encode())
    bootcheck.apply(system, system.load_state())


def install(disk: Path, source: str, keyrings: tuple[Path, ...], *, size: int | None = None,
            tries: int | None = None, cmdline: str = "", allow_unsigned_packages: bool = False,
            boot_loader: Path = BOOT_LOADER) -> InstallResult:
    """Partition disk, install systemd-boot, deploy source as the first deployment."""
    from deploy.bootentries import ENTRIES
    from deploy.system import open_system
    from deploy.transaction import DeployOptions, deploy

    if not boot_loader.is_file():
        raise DeployError(f"{boot_loader}: no systemd-boot EFI binary (install systemd-boot-efi)")
    _prepare_disk(disk, size)
    esp_part, root_part = _partition(disk, ESP_SIZE)
    with tempfile.TemporaryDirectory(prefix="rpmimg-install-") as work:
        esp = _make_esp(Path(work) / "esp.img", esp_part.size, boot_loader)
        mnt = Path(work) / "root"
        mnt.mkdir()
        with _loop(disk, root_part) as dev:
            run(["mkfs.btrfs", "-q", "-f", "-L", "rpmimg", dev])
            run(["mount", "-t", "btrfs", dev, os.fspath(mnt)])
            try:
                with open_system(mnt) as opened:
                    system = dataclasses.replace(opened, esp=esp, tries=tries)
                    result = deploy(system, DeployOptions(
                        source=source, keyrings=keyrings,
                        allow_unsigned_packages=allow_unsigned_packages))
                    _mount_esp(system, result.deployment, esp_part)
                    if cmdline.strip():
                        _set_cmdline(system, result.deployment, cmdline)
            finally:
                run(["umount", os.fspath(mnt)])
        entries = tuple(esp.listdir(ENTRIES))
        try:
            run(["dd", f"if={esp.image}", f"of={disk}", "bs=1M", f"seek={esp_part.offset}",
                 "oflag=seek_bytes", "conv=notrunc,fsync", "status=none"])
        except CommandError as e:
            raise DeployError(f"{disk}: cannot write the ESP: {e}") from e
    return InstallResult(os.fspath(disk), esp_part, root_part, result.deployment, entries,
                         result.image, result.version)
