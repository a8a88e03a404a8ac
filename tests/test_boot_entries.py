"""Boot entries in a directory ESP: written by deploy, rollback and cleanup, counted, shared
kernel and initrd files, space checked before staging, and a kill at any write leaving a
bootable ESP."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from bootimages import KVER, boot_order, default_entry, publish_bootable, read_entries
from deploytools import Images, deploy, rpmimg, state_of

pytest_plugins = ("deployenv",)

pytestmark = pytest.mark.root

K1, I1 = b"kernel one\n" * 100, b"initrd one\n" * 100
K2, I2 = b"kernel two\n" * 100, b"initrd two\n" * 100


@pytest.fixture(scope="module")
def boot_images(images: Images, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bootimages")
    empty = [p for p in images.v1_rpms if p.name.startswith("empty-")]
    return {
        "1": publish_bootable(out, "1", empty, images.key, {KVER: (K1, I1)}),
        "2": publish_bootable(out, "2", empty, images.key, {KVER: (K2, I2)}),
        "3": publish_bootable(out, "3", empty, images.key, {KVER: (K2, I2)}),
        "big": publish_bootable(out, "4", empty, images.key, {KVER: (b"k" * (3 << 20), I2)}),
    }


@pytest.fixture
def esp(tmp_path: Path) -> Path:
    d = tmp_path / "esp"
    (d / "EFI/other").mkdir(parents=True)
    (d / "EFI/other/loader.efi").write_bytes(b"someone else's")
    (d / "loader/entries").mkdir(parents=True)
    (d / "loader/entries/other.conf").write_text("title other\nlinux /EFI/other/loader.efi\n")
    return d


def _deploy(sysroot: Path, esp: Path, manifest: Path, images: Images, *extra: str) -> str:
    return str(deploy(sysroot, manifest, images.key, "--esp", esp, *extra).json()["deployment"]["id"])


def _files(esp: Path) -> set[str]:
    return {os.fspath(p.relative_to(esp)) for p in esp.rglob("*") if p.is_file()}


def test_each_deployment_gets_a_counted_entry_and_the_default_boots_first(
    sysroot: Path, esp: Path, boot_images: dict[str, Path], images: Images,
) -> None:
    one = _deploy(sysroot, esp, boot_images["1"], images)
    first = default_entry(esp)
    assert first.file == f"rpmimg-{one}-{KVER}+3.conf"
    uuid = subprocess.run(["findmnt", "-no", "UUID", sysroot], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert f"mount.usr=UUID={uuid}" in first.options
    assert f"subvol=/@rpmimg/deployments/{one},ro" in first.options
    assert (esp / first.linux.lstrip("/")).read_bytes() == K1
    # A blessed entry (systemd-bless-boot drops the counter) keeps its name from then on.
    os.rename(esp / "loader/entries" / first.file, esp / f"loader/entries/rpmimg-{one}-{KVER}.conf")

    two = _deploy(sysroot, esp, boot_images["2"], images, "--tries", "2")
    three = _deploy(sysroot, esp, boot_images["3"], images)
    order = [e.file for e in boot_order(esp) if e.file.startswith("rpmimg-")]
    assert order == [f"rpmimg-{three}-{KVER}+3.conf", f"rpmimg-{two}-{KVER}+2.conf",
                     f"rpmimg-{one}-{KVER}.conf"]
    # Kernel and initrd are stored once per content: v2 and v3 share theirs.
    stored = sorted(p.read_bytes() for p in (esp / "rpmimg").iterdir())
    assert stored == sorted([K1, I1, K2, I2])
    # Nothing of the ESP that rpmimg did not make was touched.
    assert (esp / "EFI/other/loader.efi").read_bytes() == b"someone else's"
    assert (esp / "loader/entries/other.conf").is_file()

    rpmimg("rollback", "--sysroot", sysroot, "--esp", esp)
    assert default_entry(esp).file == f"rpmimg-{two}-{KVER}+2.conf"
    ours = [e.file for e in boot_order(esp) if e.file.startswith("rpmimg-")]
    assert ours[-1] == f"rpmimg-{three}-{KVER}+3.conf"  # known bad: last of ours

    status = rpmimg("status", "--sysroot", sysroot, "--esp", esp, "--json", "--no-size").json()
    boot = {r["id"]: r["boot"] for r in status["deployments"]}  # type: ignore[union-attr]
    assert boot[one] == [{"entry": f"rpmimg-{one}-{KVER}.conf", "kernel_version": KVER,
                          "assessment": "good", "tries_left": None, "tries_done": 0}]
    assert boot[two][0]["assessment"] == "counting" and boot[two][0]["tries_left"] == 2


def test_cleanup_removes_only_what_it_made_and_nothing_still_needed(
    sysroot: Path, esp: Path, boot_images: dict[str, Path], images: Images,
) -> None:
    for v in ("1", "2", "3"):
        _deploy(sysroot, esp, boot_images[v], images)
    before = _files(esp)
    rpmimg("cleanup", "--sysroot", sysroot, "--esp", esp, "--keep", "1")
    left = [e for e in read_entries(esp) if e.file.startswith("rpmimg-")]
    assert [e.file for e in left] == [f"rpmimg-3-{KVER}+3.conf"]
    # v1's kernel and initrd went; the v2/v3 shared ones stayed, as did everything foreign.
    assert sorted(p.read_bytes() for p in (esp / "rpmimg").iterdir()) == sorted([K2, I2])
    assert {f for f in before if not f.startswith(("rpmimg/", "loader/entries/rpmimg-"))} <= _files(esp)
    default_entry(esp)
    # The boot records of removed deployments went too.
    assert sorted(p.name for p in (sysroot / "@rpmimg/boot").glob("*.json")) == ["3.json"]


@pytest.fixture
def small_esp(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "small-esp"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "rpmimg-esp", d], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", d], check=True)


def test_esp_too_small_is_refused_before_anything_is_staged(
    sysroot: Path, small_esp: Path, boot_images: dict[str, Path], images: Images,
) -> None:
    _deploy(sysroot, small_esp, boot_images["1"], images)
    esp_before = {f: (small_esp / f).read_bytes() for f in _files(small_esp)}
    state_before = state_of(sysroot)
    subvols_before = sorted(os.listdir(sysroot / "@rpmimg/deployments"))
    r = deploy(sysroot, boot_images["big"], images.key, "--esp", small_esp, check=False)
    assert r.code == 1
    assert "not enough space in the boot partition" in r.err and "nothing was changed" in r.err
    assert "Traceback" not in r.err and len(r.err.strip().splitlines()) == 1
    assert {f: (small_esp / f).read_bytes() for f in _files(small_esp)} == esp_before
    assert state_of(sysroot) == state_before
    assert sorted(os.listdir(sysroot / "@rpmimg/deployments")) == subvols_before
    assert os.listdir(sysroot / "@rpmimg/staging") == ["downloads"]
    assert os.listdir(sysroot / "@rpmimg/staging/downloads") == []
    assert sorted(os.listdir(sysroot / "@rpmimg/boot/files")) == sorted(
        os.listdir(small_esp / "rpmimg"))  # the big kernel was not fetched either


def test_space_freed_by_removing_unneeded_files_counts(
    sysroot: Path, small_esp: Path, boot_images: dict[str, Path], images: Images,
) -> None:
    # A kernel file no deployment needs (left by an earlier system) can make room.
    (small_esp / "rpmimg").mkdir()
    (small_esp / "rpmimg" / ("0" * 64)).write_bytes(b"x" * (1 << 20) + b"y" * (600 << 10))
    _deploy(sysroot, small_esp, boot_images["1"], images)
    assert not (small_esp / "rpmimg" / ("0" * 64)).exists()


def _esp_points(args: list[str | os.PathLike[str]], log: Path) -> list[int]:
    log.unlink(missing_ok=True)
    rpmimg(*args, env={"RPMIMG_CHECKPOINT_LOG": os.fspath(log)})
    labels = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    return [i + 1 for i, label in enumerate(labels) if label.startswith("esp ")]


def test_kill_at_every_esp_write_leaves_old_or_new_default(
    sysroot: Path, esp: Path, boot_images: dict[str, Path], images: Images, tmp_path: Path,
) -> None:
    """Rollback (2 -> 1) and deploying 2 again (1 -> 2) each rewrite both entries: killed at
    each write, the ESP's default is the old or the new one, with its files, never broken."""
    one = _deploy(sysroot, esp, boot_images["1"], images)
    two = _deploy(sysroot, esp, boot_images["2"], images)
    back = ["rollback", "--sysroot", sysroot, "--esp", esp]
    # Deploying the rolled-back 2 again is meant: --force.
    again = ["deploy", "--sysroot", sysroot, "--esp", esp, "--keyring", images.key.public,
             "--force", boot_images["2"]]
    points = {"back": _esp_points(back, tmp_path / "log"), "again": _esp_points(again, tmp_path / "log")}
    assert len(points["back"]) >= 4 and len(points["again"]) >= 4, points
    seen = set()
    for name, args, old, new in (("back", back, two, one), ("again", again, one, two)):
        if state_of(sysroot)["default"] != old:
            rpmimg(*(again if name == "back" else back))
        for n in points[name]:
            r = rpmimg(*args, env={"RPMIMG_KILL_AT": str(n)}, check=False)
            assert r.code == -9, (name, n, r.err)
            first = default_entry(esp)
            content = (esp / "loader/entries" / first.file).read_text()
            assert content.endswith("\n") and content.count("\n") == 6, content
            booted = first.file.split("-")[1]
            assert booted in (old, new), (name, n, first.file)
            seen.add((name, booted))
            # The next command settles the ESP on the state, leaving no temporary file.
            rpmimg("status", "--sysroot", sysroot, "--esp", esp, "--no-size")
            state = state_of(sysroot)
            assert default_entry(esp).file.split("-")[1] == state["default"]
            assert not list(esp.rglob(".*.tmp-*"))
            # Back to where this command starts from.
            if state["default"] != old:
                rpmimg(*(again if name == "back" else back))
    assert {("back", two), ("back", one), ("again", one), ("again", two)} <= seen


@contextlib.contextmanager
def _booted(sysroot: Path, deployment: str) -> Iterator[None]:
    """Mount a deployment on SYSROOT/usr as its boot entry would."""
    device = subprocess.run(["findmnt", "-no", "SOURCE", sysroot], capture_output=True, text=True,
                            check=True).stdout.strip()
    usr = sysroot / "usr"
    usr.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", f"ro,subvol=/@rpmimg/deployments/{deployment}", device, usr],
                   check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", usr], check=True)


def test_failed_health_check_then_fallback_is_recorded_and_not_reactivated(
    sysroot: Path, esp: Path, boot_images: dict[str, Path], images: Images,
) -> None:
    one = _deploy(sysroot, esp, boot_images["1"], images)
    two = _deploy(sysroot, esp, boot_images["2"], images)
    checks = sysroot / "etc/rpmimg/health.d"
    checks.mkdir(parents=True)
    (checks / "10-ok").write_text("#!/bin/sh\nexit 0\n")
    (checks / "20-network").write_text("#!/bin/sh\necho 'no route to the update server' >&2\nexit 3\n")
    (checks / "30-not-executable").write_text("#!/bin/sh\nexit 1\n")
    for c in ("10-ok", "20-network"):
        os.chmod(checks / c, 0o755)
    with _booted(sysroot, two):
        r = rpmimg("health-check", "--sysroot", sysroot, "--esp", esp, check=False)
    assert r.code == 1 and "20-network" in r.out and "30-not" not in r.out
    # Nothing is recorded while the entry still has tries (the next boot may work).
    with _booted(sysroot, one):
        assert rpmimg("boot-check", "--sysroot", sysroot, "--esp", esp, "--json").json() == {
            "failed": None, "reason": None}
    assert state_of(sysroot)["default"] == two
    # systemd-bless-boot bad (or the tries running out) leaves the entry with no tries left.
    entries = esp / "loader/entries"
    os.rename(entries / f"rpmimg-{two}-{KVER}+3.conf", entries / f"rpmimg-{two}-{KVER}+0-3.conf")
    with _booted(sysroot, one):
        out = rpmimg("boot-check", "--sysroot", sysroot, "--esp", esp, "--json").json()
        assert out["failed"]["id"] == two and "no route to the update server" in str(out["reason"])
        status = rpmimg("status", "--sysroot", sysroot, "--esp", esp, "--json", "--no-size").json()
    rows = {r["id"]: r for r in status["deployments"]}  # type: ignore[union-attr]
    assert rows[two]["failed"] == out["reason"] and rows[two]["rolled_back"] and not rows[two]["default"]
    assert rows[one]["default"] and rows[two]["boot"][0]["assessment"] == "bad"
    assert default_entry(esp).file == f"rpmimg-{one}-{KVER}+3.conf"
    assert (sysroot / "@rpmimg/deployments" / two).is_dir()  # kept for inspection
    refused = deploy(sysroot, boot_images["2"], images.key, "--esp", esp, check=False)
    assert refused.code == 1 and "failed to boot" in refused.err and "--force" in refused.err
    assert state_of(sysroot)["default"] == one
    deploy(sysroot, boot_images["2"], images.key, "--esp", esp, "--force")
    assert state_of(sysroot)["default"] == two
    # Made the default again, it is counted afresh (an entry with no tries left sorts last).
    assert default_entry(esp).file == f"rpmimg-{two}-{KVER}+3.conf"
    assert not (entries / f"rpmimg-{two}-{KVER}+0-3.conf").exists()
