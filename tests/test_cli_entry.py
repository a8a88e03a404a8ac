"""The rpmimg command's entry point: main()'s outcome, with what is left frozen for exit."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from rpmimg import cli


@pytest.fixture
def unfrozen():
    """Whatever a test freezes is unfrozen after it: this process goes on."""
    yield
    gc.unfreeze()


def test_entry_returns_mains_code_and_freezes_what_is_left(monkeypatch, unfrozen):
    monkeypatch.setattr(cli, "main", lambda: 3)
    gc.unfreeze()
    assert cli.entry() == 3
    assert gc.get_freeze_count() > 0


def test_entry_freezes_on_the_way_out_of_an_error_too(monkeypatch, unfrozen):
    def fails() -> int:
        raise SystemExit(2)

    monkeypatch.setattr(cli, "main", fails)
    gc.unfreeze()
    with pytest.raises(SystemExit) as raised:
        cli.entry()
    assert raised.value.code == 2
    assert gc.get_freeze_count() > 0


def test_the_command_still_says_what_main_says(tmp_path):
    """`python -m rpmimg` goes through entry(): its output and status are main()'s."""
    run = subprocess.run([sys.executable, "-m", "rpmimg", "deploy", "--sysroot", str(tmp_path),
                          str(tmp_path / "manifest.json")], capture_output=True, text=True)
    assert (run.returncode, run.stdout) == (1, "")
    assert run.stderr == f"rpmimg: error: {tmp_path}: not on a btrfs filesystem\n"
