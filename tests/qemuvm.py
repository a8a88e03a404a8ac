"""A QEMU machine for the end-to-end boot test: OVMF, a raw disk, TCG, serial to a file.

Each `boot()` runs QEMU until the guest powers off or reboots (`-no-reboot` turns a reboot
into an exit), so the test can read the ESP with mtools between boots. Two 9p shares reach
the guest: `images` (the published images, read-only) and `ctl` (what the guest's test
driver runs at this boot, and where it leaves its reports).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
QEMU = "qemu-system-x86_64"

# What the test puts in the installed root's /etc: a unit running ctl/next.sh at each boot,
# after the boot was blessed (or not), with its output in the share and markers on the
# serial console through /dev/kmsg (a getty's vhangup does not cut that).
DRIVER_SERVICE = """[Unit]
Description=rpmimg end-to-end test driver
After=multi-user.target systemd-bless-boot.service rpmimg-boot-check.service
Wants=multi-user.target

[Service]
Type=oneshot
ExecStart=/etc/e2e/driver.sh
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target
"""

DRIVER_SCRIPT = """#!/bin/sh
mark() { echo "E2E: $*" > /dev/kmsg; }
mkdir -p /run/e2e/images /run/e2e/ctl
mount -t 9p -o trans=virtio,ro images /run/e2e/images || mark "cannot mount images"
mount -t 9p -o trans=virtio ctl /run/e2e/ctl || mark "cannot mount ctl"
mark "variant=$(cat /usr/share/bootimage/variant) cmdline=$(cat /proc/cmdline)"
if [ -x /run/e2e/ctl/next.sh ]; then
    n=$(cat /run/e2e/ctl/boot-number 2>/dev/null || echo 0)
    /run/e2e/ctl/next.sh > /run/e2e/ctl/boot-$n.log 2>&1
    mark "step exited $? (boot $n)"
    sync
fi
"""


def available() -> str | None:
    """Why the QEMU test cannot run here, or None."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} not installed (qemu-system-x86)"
    if not OVMF_CODE.is_file():
        return f"{OVMF_CODE} not present (ovmf)"
    return None


@dataclass
class Machine:
    disk: Path
    work: Path
    images: Path
    memory_mib: int = 1536
    boots: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vars = self.work / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, self.vars)  # one per disk: the boot variables it keeps
        self.ctl = self.work / "ctl"
        self.ctl.mkdir(exist_ok=True)

    def argv(self) -> list[str]:
        return [
            QEMU, "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1",
            "-m", str(self.memory_mib), "-nodefaults", "-serial", "stdio", "-display", "none",
            "-no-reboot",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.vars}",
            "-drive", f"file={self.disk},format=raw,if=virtio,cache=unsafe",
            "-virtfs", f"local,path={self.images},mount_tag=images,security_model=none,readonly=on",
            "-virtfs", f"local,path={self.ctl},mount_tag=ctl,security_model=none",
        ]

    def boot(self, step: str, timeout: float = 600) -> str:
        """Boot once with ctl/next.sh = step (shell); the serial output when QEMU exits."""
        n = len(self.boots)
        script = self.ctl / "next.sh"
        script.write_text("#!/bin/sh\nset -x\n" + step + "\n")
        os.chmod(script, 0o755)
        (self.ctl / "boot-number").write_text(f"{n}\n")
        log = self.work / f"serial-{n}.log"
        start = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                text = log.read_text(errors="replace")
                raise AssertionError(f"boot {n} did not end in {timeout:g} s; serial tail:\n"
                                     + text[-3000:]) from None
        text = log.read_text(errors="replace")
        self.boots.append(text)
        print(f"boot {n}: {time.monotonic() - start:.0f} s")
        return text

    def report(self, n: int | None = None) -> str:
        n = len(self.boots) - 1 if n is None else n
        path = self.ctl / f"boot-{n}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def mounted_partition(disk: Path, offset: int, size: int, mnt: Path) -> Iterator[Path]:
    dev = subprocess.run(["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit",
                          str(size), disk], capture_output=True, check=True, text=True).stdout.strip()
    try:
        mnt.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", dev, mnt], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=True)
    finally:
        subprocess.run(["losetup", "--detach", dev], check=True)


def add_driver(root: Path) -> None:
    """Install the test driver into a deployment root's /etc."""
    etc = root / "etc"
    (etc / "e2e").mkdir(parents=True, exist_ok=True)
    (etc / "e2e/driver.sh").write_text(DRIVER_SCRIPT)
    os.chmod(etc / "e2e/driver.sh", 0o755)
    units = etc / "systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    (units / "rpmimg-e2e.service").write_text(DRIVER_SERVICE)
    link = units / "multi-user.target.wants/rpmimg-e2e.service"
    if not link.is_symlink():
        link.symlink_to("../rpmimg-e2e.service")


def _download(package: str, cache: Path) -> Path:
    found = sorted(cache.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=cache, check=True, capture_output=True)
        found = sorted(cache.glob(f"{package}_*.deb"))
    return found[-1]


def debian_kernel_and_busybox(cache: Path) -> tuple[bytes, bytes]:
    """Debian's kernel (vmlinuz) and a static busybox, from their packages (cached)."""
    cache.mkdir(parents=True, exist_ok=True)
    depends = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True,
                             text=True, check=True).stdout
    image = next(line.split()[-1] for line in depends.splitlines()
                 if "Depends:" in line and "linux-image-" in line)
    out = {}
    for package, member in ((image, "./boot/vmlinuz-"), ("busybox-static", "./bin/busybox")):
        deb = _download(package, cache)
        listing = subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -t", shell=True,
                                 capture_output=True, text=True, check=True).stdout.split()
        name = next(n for n in listing if n.startswith(member))
        out[package] = subprocess.run(f"dpkg-deb --fsys-tarfile {deb} | tar -xO {name}", shell=True,
                                      capture_output=True, check=True).stdout
    return out[image], out["busybox-static"]


def busybox_initrd(busybox: bytes, work: Path, then: str) -> bytes:
    """A tiny initrd that reports its command line on the console, then runs `then`
    (`poweroff -f`: a boot that worked; `reboot -f`: a boot that failed in the initrd)."""
    root = work / f"initrd-{then.split()[0]}"
    for d in ("bin", "proc", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "bin/busybox").write_bytes(busybox)
    os.chmod(root / "bin/busybox", 0o755)
    (root / "init").write_text(
        "#!/bin/busybox sh\n"
        "/bin/busybox mount -t proc proc /proc\n"
        "/bin/busybox mount -t devtmpfs dev /dev\n"
        f'echo "E2E-INITRD: {then.split()[0]} cmdline=$(/bin/busybox cat /proc/cmdline)" > /dev/console\n'
        f"/bin/busybox {then}\n")
    os.chmod(root / "init", 0o755)
    files = subprocess.run("find . | sort", shell=True, cwd=root, capture_output=True, check=True).stdout
    return subprocess.run(["cpio", "-o", "-H", "newc", "--reproducible"], cwd=root, input=files,
                          capture_output=True, check=True).stdout
