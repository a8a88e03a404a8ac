"""Reboot policy: the window, inhibitors and rebootmgr decide; the reboot is a test command.

systemd-inhibit needs logind on a system bus and rebootmgrctl the rebootmgr service,
neither of which runs here: they are small scripts printing what the real tools print
(`systemd-inhibit --list --no-legend` of systemd 252). The reboot itself is a script that
leaves a mark, never a real reboot.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from deploy.channel import parse_reboot
from deploy.reboot import RebootCommands, blocking_inhibitors, reboot_by_policy

LISTING = """\
     NetworkManager 0 root 712 NetworkManager sleep        NetworkManager needs to turn off networks delay
     zypper         0 root 999 zypper         shutdown:idle Installing packages block
"""
AT_4 = datetime.datetime(2026, 12, 2, 4, 0)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_blocking_inhibitors_are_found() -> None:
    assert blocking_inhibitors(LISTING) == ["zypper 0 root 999 zypper shutdown:idle Installing packages block"]
    assert blocking_inhibitors("x 0 root 1 y shutdown why delay\n") == []
    assert blocking_inhibitors("") == []


def test_window_inhibitor_and_rebootmgr(tmp_path: Path) -> None:
    mark = tmp_path / "rebooted"
    reboot = (script(tmp_path, "reboot", f'echo "$@" > {mark}'), "now")
    none = script(tmp_path, "inhibit-none", "exit 0")
    busy = script(tmp_path, "inhibit-busy", f"cat <<'E'\n{LISTING}E")
    window = parse_reboot("window 03:00-05:00", "x")

    outside = reboot_by_policy(window, RebootCommands(reboot, (none,), None),
                               datetime.datetime(2026, 12, 2, 12, 0))
    assert not outside.rebooted and "not now (12:00)" in outside.reason and not mark.exists()
    never = reboot_by_policy(parse_reboot("never", "x"), RebootCommands(reboot, (none,), None), AT_4)
    assert not never.rebooted and not mark.exists()
    held = reboot_by_policy(window, RebootCommands(reboot, (busy,), None), AT_4)
    assert not held.rebooted and "inhibited: zypper" in held.reason and not mark.exists()
    broken = script(tmp_path, "inhibit-nobus", "echo 'Failed to connect to bus' >&2; exit 1")
    unknown = reboot_by_policy(window, RebootCommands(reboot, (broken,), None), AT_4)
    assert not unknown.rebooted and "cannot list shutdown inhibitors" in unknown.reason
    assert not mark.exists()

    done = reboot_by_policy(window, RebootCommands(reboot, (none,), None), AT_4)
    assert done.rebooted and mark.read_text() == "now\n"
    mark.unlink()
    # With rebootmgr installed, it decides (its own strategy and locks), not our command.
    mgr_mark = tmp_path / "rebootmgr"
    mgr = (script(tmp_path, "rebootmgrctl", f'echo "$@" > {mgr_mark}'), "reboot")
    via = reboot_by_policy(parse_reboot("immediately", "x"), RebootCommands(reboot, None, mgr))
    assert via.rebooted and mgr_mark.read_text() == "reboot\n" and not mark.exists()
