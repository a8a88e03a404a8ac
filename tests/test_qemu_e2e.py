"""End to end, on QEMU (TCG) with OVMF and systemd-boot: a system installed by rpmimg boots,
updates itself, survives a failing health check and an initrd that cannot mount /usr, and
rolls back, each step proven by the serial console and by the ESP read with mtools after
the machine stopped.

The image is the small bootable Debian-derived test image (fixtures.bootimage, variants
v1..v4). Inside the guest a test driver (a unit the test adds to the installed root's /etc)
runs what the test put in the `ctl` 9p share for that boot.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from qemuvm import Machine, add_driver, available, mounted_partition

from deploy.esp import FatImageEsp

pytestmark = [pytest.mark.qemu, pytest.mark.root, pytest.mark.slow]

# systemd.firstboot=off: on a first boot (no /etc/machine-id) Debian's systemd-firstboot.service
# prompts on the console for locale, timezone and root password, and waits for an answer that
# never comes here; systemd-sysusers.service is ordered after it and systemd-udevd.service after
# that, so without this udev never starts and every device unit times out (emergency mode).
CMDLINE = ("console=ttyS0,115200 printk.devkmsg=on systemd.show_status=1 rd.shell=0"
           " systemd.firstboot=off")
DISK_SIZE = "6G"


def _image(variants: tuple[str, ...]):  # type: ignore[no-untyped-def]
    try:
        from fixtures.bootimage import Unavailable, build_bootimage
    except ImportError as e:
        pytest.skip(f"the bootable test image fixture is not available: {e}")
    try:
        return build_bootimage(variants=variants)
    except Unavailable as e:
        pytest.skip(f"the bootable test image cannot be built here: {e}")


def _entries(esp: FatImageEsp) -> dict[str, str]:
    """deployment id -> its entry's file name."""
    out = {}
    for name in esp.listdir("loader/entries"):
        m = re.match(r"rpmimg-([0-9]+)-", name)
        if m:
            out[m.group(1)] = name
    return out


def _variant(serial: str) -> str:
    found = re.findall(r"E2E: variant=(v[0-9])", serial)
    assert found, "no test driver report on the serial console:\n" + serial[-3000:]
    return str(found[-1])


# The guest's status, as JSON in the share (the report also has the commands' traces).
STATUS = "rpmimg status --json --no-size > /run/e2e/ctl/status.json"
ESP = '--esp "$(bootctl --print-esp-path)"'
CHANNEL = "/run/e2e/channel"


def _status(vm: Machine) -> dict[str, dict[str, object]]:
    data = json.loads((vm.ctl / "status.json").read_text())
    (vm.ctl / "status.json").unlink()
    return {r["id"]: r for r in data["deployments"]}


def _guest(image, variant: str) -> str:  # type: ignore[no-untyped-def]
    version = image.versions[variant]
    return f"/run/e2e/images/images/bootimage/{version}/manifest.json"


def _booted(serial: str) -> str:
    """The deployment whose /usr the kernel was told to mount (the entry systemd-boot chose)."""
    found = re.findall(r"Command line: .*mount\.usrflags=subvol=/@rpmimg/deployments/([0-9]+),ro",
                       serial)
    assert found, "no kernel command line on the serial console:\n" + serial[-3000:]
    return str(found[0])


# The upgrade timer, shortened (every 10 s, no random delay), and its service taking the
# test image's packages, which carry no header signature (Debian signs its archive; the
# signed manifest still pins each one), with its output on the console. Runtime drop-ins
# (/run): later boots have the vendor's hourly timer again.
TIMER_DROPIN = "[Timer]\nOnCalendar=\nOnCalendar=*:*:0/10\nRandomizedDelaySec=0\nAccuracySec=1s\n"
SERVICE_DROPIN = ("[Service]\nExecStart=\n"
                  "ExecStart=/usr/bin/rpmimg upgrade --reboot --allow-unsigned-packages\n"
                  "Environment=PYTHONUNBUFFERED=1\n"
                  "StandardOutput=journal+console\nStandardError=journal+console\n")


def _self_upgrade(vm: Machine, version: str) -> str:
    """Shell for the guest: publish `version` as the latest of a channel on a local
    directory (bind mounts of the images share: a channel on a USB stick), configure the
    channel with a reboot window open now, shorten the upgrade timer, and wait for it to
    deploy and reboot."""
    units = vm.ctl / "units"
    units.mkdir(exist_ok=True)
    (units / "timer.conf").write_text(TIMER_DROPIN)
    (units / "service.conf").write_text(SERVICE_DROPIN)
    d = "/run/systemd/system/rpmimg-upgrade"
    return "\n".join((
        f"mkdir -p {CHANNEL}/pool {CHANNEL}/images/bootimage/{version}",
        f"mount --bind /run/e2e/images/pool {CHANNEL}/pool",
        f"mount --bind /run/e2e/images/images/bootimage/{version} {CHANNEL}/images/bootimage/{version}",
        f"ln -s {version} {CHANNEL}/images/bootimage/latest",
        "mkdir -p /etc/rpmimg",
        "{ echo 'image = \"bootimage\"'",
        f"  echo 'urls = [\"file://{CHANNEL}/\"]'",
        "  echo \"reboot = \\\"window $(date +%H:%M)-$(date -d '+1 hour' +%H:%M)\\\"\"",
        "} > /etc/rpmimg/channel.conf",
        "cat /etc/rpmimg/channel.conf",
        "rpmimg check; echo \"check exited $?\"",
        f"mkdir -p {d}.timer.d {d}.service.d",
        f"cp /run/e2e/ctl/units/timer.conf {d}.timer.d/e2e.conf",
        f"cp /run/e2e/ctl/units/service.conf {d}.service.d/e2e.conf",
        # The guest has no network (its channel is local): the upgrade service's
        # network-online.target would wait for networkd's wait-online to time out.
        "systemctl mask --runtime systemd-networkd-wait-online.service",
        "systemctl daemon-reload",
        "systemctl restart rpmimg-upgrade.timer",
        "systemctl list-timers --all --no-pager rpmimg-upgrade.timer",
        "sleep 700",
        "echo 'no reboot came from the upgrade timer'",
        "journalctl -b -u rpmimg-upgrade.service --no-pager | tail -40",
        "systemctl poweroff",
    )) + "\n"


def _deploy_from_host(disk: Path, installed: dict[str, Any], manifest: Path, key: Path,
                      tries: int, mnt: Path, allow_unsigned_packages: bool = True) -> None:
    """Deploy into the powered-off disk from outside (its ESP a FAT image, with mtools)."""
    root = installed["root"]
    with mounted_partition(disk, root["offset_bytes"], root["size_bytes"], mnt) as top:
        subprocess.run(
            [sys.executable, "-c",
             "import dataclasses, sys; from pathlib import Path\n"
             "from deploy.esp import FatImageEsp\n"
             "from deploy.system import open_system\n"
             "from deploy.transaction import DeployOptions, deploy\n"
             "with open_system(Path(sys.argv[1])) as s:\n"
             "    esp = FatImageEsp(Path(sys.argv[2]), int(sys.argv[3]))\n"
             "    s = dataclasses.replace(s, esp=esp, tries=int(sys.argv[6]))\n"
             "    r = deploy(s, DeployOptions(source=sys.argv[4], keyrings=(Path(sys.argv[5]),),"
             " allow_unsigned_packages=sys.argv[7] == 'yes'))\n"
             "    print(r.outcome.value, r.deployment, r.version)\n",
             top, disk, str(installed["esp"]["offset_bytes"]), manifest, key, str(tries),
             "yes" if allow_unsigned_packages else "no"],
            check=True)


def test_boot_update_fallback_rollback(tmp_path: Path) -> None:
    """Issue 12's five steps, issue 14's self-upgrade as the v2 -> v3 transition, and the
    /etc edit made after a deploy carried into the new deployment at its first boot."""
    reason = available()
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    image = _image(("v1", "v2", "v3", "v4"))
    disk = tmp_path / "disk.img"
    out = subprocess.run(
        [sys.executable, "-m", "rpmimg", "install", image.manifest_path("v1"), "--disk", disk,
         "--size", DISK_SIZE, "--keyring", image.key.public, "--cmdline", CMDLINE,
         "--allow-unsigned-packages", "--json"],
        capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    installed = json.loads(out.stdout)
    esp = FatImageEsp(disk, installed["esp"]["offset_bytes"])
    root = installed["root"]
    assert list(_entries(esp).values()) == [f"{installed['entries'][0]}"]
    assert _entries(esp)["1"].endswith("+3.conf")
    with mounted_partition(disk, root["offset_bytes"], root["size_bytes"], tmp_path / "mnt") as top:
        add_driver(top / "@rpmimg/roots/1")
    vm = Machine(disk, tmp_path, image.output)
    print(f"image and install: {time.monotonic() - t0:.0f} s")

    # 1. v1 boots, passes its health checks, is blessed; inside it, deploy v2, then edit /etc.
    serial = vm.boot(
        "rpmimg status\n"
        f"rpmimg deploy --allow-unsigned-packages {ESP} {_guest(image, 'v2')}\n"
        "echo made-after-deploy > /etc/e2e-edit\n"
        "systemctl poweroff\n")
    assert _booted(serial) == "1" and _variant(serial) == "v1", serial[-2000:]
    assert "rpmimg[" in serial and "healthy" in serial, serial[-3000:]
    e = _entries(esp)
    assert e["1"] == installed["entries"][0].replace("+3", ""), (e, vm.report())  # blessed
    assert e["2"].endswith("+3.conf"), (e, vm.report())

    # 2. v2 boots; its initrd carried the edit into its root; it is healthy and blessed.
    # Then (issue 14) its upgrade timer, shortened by a drop-in, upgrades it from the
    # channel to v3 and reboots, the window being open.
    v3 = image.versions["v3"]
    serial = vm.boot("cat /etc/e2e-edit\ncat /etc/rpmimg/etc-sync.log\n" + _self_upgrade(vm, v3),
                     timeout=900)
    report = vm.report()
    assert _booted(serial) == "2" and _variant(serial) == "v2", serial[-2000:]
    assert "carried e2e-edit" in serial, serial[-3000:]  # the initrd's sync, on the console
    assert "made-after-deploy" in report and "carried e2e-edit" in report, report
    assert f"update available: {v3}" in report and "check exited 10" in report, report
    assert "rpmimg-upgrade.timer" in report, report  # listed, shortened
    # The step waits; the machine rebooted by itself (the upgrade's own report may be cut
    # short by that reboot, so the proof is the reboot, the entry, and v3's status below).
    assert "E2E: step exited" not in serial and "no reboot came" not in report, report
    assert "reboot: Restarting system" in serial, serial[-3000:]
    e = _entries(esp)
    assert not re.search(r"\+[0-9]", e["2"]) and e["3"].endswith("+3.conf"), e

    # 3. v3 boots, its health check fails, its entry is marked bad and the machine reboots.
    serial = vm.boot("true\n")
    assert _booted(serial) == "3", serial[-2000:]
    assert "health check failed: 50-bootimage-v3" in serial, serial[-3000:]
    e = _entries(esp)
    assert re.search(r"\+0-1\.conf$", e["3"]), e
    # ... and comes back in v2 on its own; rpmimg records v3 as failed.
    serial = vm.boot(f"{STATUS}\nrpmimg status\nsystemctl poweroff\n")
    assert _booted(serial) == "2" and _variant(serial) == "v2", serial[-2000:]
    assert "deployment 3 failed to boot: health check failed" in serial, serial[-3000:]
    rows = _status(vm)
    assert "health check failed" in str(rows["3"]["failed"]) and rows["3"]["rolled_back"], rows
    assert rows["2"]["default"] and rows["2"]["booted"], rows
    assert rows["3"]["version"] == v3, rows
    assert re.search(r"\n\s*3\s+bootimage\s.*failed", vm.report()), vm.report()

    # 4. v4's initrd has no btrfs driver: it cannot mount the root or /usr, gives up (its
    # short rd.timeout) and reboots; with one try systemd-boot falls back to v2 on its
    # own. (Deployed from outside, to spare a boot.)
    _deploy_from_host(disk, installed, image.manifest_path("v4"), image.key.public, 1,
                      tmp_path / "mnt")
    assert _entries(esp)["4"].endswith("+1.conf"), _entries(esp)
    serial = vm.boot("true\n", timeout=400)
    assert _booted(serial) == "4", serial[-2000:]
    assert "E2E: variant=" not in serial, serial[-2000:]  # never reached the running system
    assert re.search(r"\+0-1\.conf$", _entries(esp)["4"]), _entries(esp)
    serial = vm.boot(f"{STATUS}\nrpmimg rollback {ESP}\nsystemctl reboot\n")
    assert _booted(serial) == "2" and _variant(serial) == "v2", serial[-2000:]
    rows = _status(vm)
    assert "did not reach boot-complete.target" in str(rows["4"]["failed"]), rows

    # 5. rollback in v2: the next boot is v1.
    serial = vm.boot(f"{STATUS}\nsystemctl poweroff\n")
    assert _booted(serial) == "1" and _variant(serial) == "v1", vm.report()
    rows = _status(vm)
    assert rows["1"]["booted"] and rows["1"]["default"] and rows["2"]["rolled_back"], rows
    print(f"end to end: {len(vm.boots)} boots, {time.monotonic() - t0:.0f} s")


def _booted_deployment(serial: str) -> str:
    found = re.findall(r"E2E-INITRD: \w+ cmdline=.*deployments/([0-9]+),ro", serial)
    assert found, "the initrd did not report:\n" + serial[-3000:]
    return str(found[-1])


def test_systemd_boot_counts_tries_and_falls_back(tmp_path: Path) -> None:
    """The boot loader half, on real firmware and systemd-boot, with Debian's kernel and a
    tiny initrd standing in for a system (it reports its command line, then powers off, or
    reboots as an initrd that cannot mount /usr would): install, the entry's tries counted
    down, a second deployment's counted entry tried until no tries are left, then the boot
    loader falls back to the first deployment on its own."""
    reason = available()
    if reason:
        pytest.skip(reason)
    from bootimages import publish_bootable
    from deploytools import V1, V2
    from qemuvm import busybox_initrd, debian_kernel_and_busybox

    from fixtures.build import fixture_packages, signing_key

    try:
        kernel, busybox = debian_kernel_and_busybox(Path.home() / ".cache/rpmimg/qemu")
    except (subprocess.CalledProcessError, StopIteration) as e:
        pytest.skip(f"Debian's kernel or busybox-static cannot be had: {e}")
    key = signing_key()
    ok = busybox_initrd(busybox, tmp_path, "poweroff -f")
    fails = busybox_initrd(busybox, tmp_path, "reboot -f")
    empty = [fixture_packages()["signed"]]  # header-signed by the test key
    kver = "6.1.0-e2e"
    v1 = publish_bootable(tmp_path / "pub", V1, empty, key, {kver: (kernel, ok)})
    v2 = publish_bootable(tmp_path / "pub", V2, empty, key, {kver: (kernel, fails)})
    disk = tmp_path / "disk.img"
    out = subprocess.run(
        [sys.executable, "-m", "rpmimg", "install", v1, "--disk", disk, "--size", "1G",
         "--keyring", key.public, "--cmdline", "console=ttyS0,115200", "--json"],
        capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    installed = json.loads(out.stdout)
    esp = FatImageEsp(disk, installed["esp"]["offset_bytes"])
    vm = Machine(disk, tmp_path, tmp_path / "pub", memory_mib=512)

    assert _booted_deployment(vm.boot("", timeout=240)) == "1"
    assert _entries(esp)["1"] == f"rpmimg-1-{kver}+2-1.conf"  # systemd-boot counted the try

    # Deploy v2 from outside (its ESP is a FAT image here), with 2 tries.
    _deploy_from_host(disk, installed, v2, key.public, 2, tmp_path / "mnt",
                      allow_unsigned_packages=False)
    assert _entries(esp)["2"] == f"rpmimg-2-{kver}+2.conf"
    # Its initrd fails: tried twice, then systemd-boot picks deployment 1 by itself.
    assert _booted_deployment(vm.boot("", timeout=240)) == "2"
    assert _entries(esp)["2"] == f"rpmimg-2-{kver}+1-1.conf"
    assert _booted_deployment(vm.boot("", timeout=240)) == "2"
    assert _entries(esp)["2"] == f"rpmimg-2-{kver}+0-2.conf"
    assert _booted_deployment(vm.boot("", timeout=240)) == "1"
    assert _entries(esp)["1"] == f"rpmimg-1-{kver}+1-2.conf"
