"""The upgrade timer and service as shipped in packaging/systemd: systemd accepts them, and
they say what the README promises (randomized, hourly, enabled only by the administrator)."""

from __future__ import annotations

import configparser
import glob
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "packaging/systemd"
NAMES = ("rpmimg-upgrade.service", "rpmimg-upgrade.timer")


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def test_units_say_what_the_readme_says() -> None:
    service, timer = _unit(NAMES[0]), _unit(NAMES[1])
    assert service["Service"]["ExecStart"] == "/usr/bin/rpmimg upgrade --reboot"
    assert service["Service"]["Type"] == "oneshot"
    assert timer["Timer"]["OnCalendar"] == "hourly" and timer["Timer"]["RandomizedDelaySec"] == "1h"
    assert timer["Install"]["WantedBy"] == "timers.target"
    # No preset ships with them: the timer stays disabled until enabled (see the README).
    assert not list(UNITS.glob("*.preset"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    targets = glob.glob("/lib/systemd/system/*.target") or glob.glob("/usr/lib/systemd/system/*.target")
    if not targets:
        pytest.skip("no systemd targets installed to verify against")
    unitdir = tmp_path / "usr/lib/systemd/system"
    unitdir.mkdir(parents=True)
    for t in targets:
        shutil.copy(t, unitdir, follow_symlinks=False)
    for name in NAMES:
        shutil.copy(UNITS / name, unitdir)
    rpmimg = tmp_path / "usr/bin/rpmimg"  # what the package installs; only its presence counts
    rpmimg.parent.mkdir(parents=True)
    rpmimg.write_text("#!/bin/sh\n")
    rpmimg.chmod(0o755)
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={tmp_path}",
                           *(str(unitdir / n) for n in NAMES)], capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    # The check bites: a broken calendar spec is refused.
    (unitdir / NAMES[1]).write_text((UNITS / NAMES[1]).read_text().replace("hourly", "hourlyx"))
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={tmp_path}", str(unitdir / NAMES[1])],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "hourlyx" in proc.stderr
