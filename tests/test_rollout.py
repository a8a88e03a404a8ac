"""Staged rollouts: the per-machine choice, the rollout file's parser, publishing it signed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from deploytools import V1, V2, rpmimg
from imagepub import publish

from deploy.rollout import decide, machine_id, place, selected
from fixtures.build import fixture_packages, signing_key
from imagespec.rollout import LIMIT, Rollout, RolloutError, parse
from imagespec.signature import verify_detached
from rpmextents.keyring import Keyring

# 1000 simulated machines: ids as systemd makes them (32 hex digits), fixed for the test.
MACHINES = [hashlib.md5(f"machine {i}".encode()).hexdigest() for i in range(1000)]


def chosen(percent: int, version: str = V2) -> set[str]:
    return {m for m in MACHINES if selected(m, "demo", version, percent)}


def test_ten_percent_selects_a_tenth_the_same_each_run_and_twenty_is_a_superset() -> None:
    ten = chosen(10)
    # "10% ± 2" read as percentage points: 80 to 120 machines of 1000 (binomial sd ~9.5).
    assert 80 <= len(ten) <= 120
    assert chosen(10) == ten  # stable: a pure function of machine id, image and version
    twenty = chosen(20)
    assert ten < twenty and 160 <= len(twenty) <= 240
    assert chosen(0) == set() and chosen(100) == set(MACHINES)
    # A new version draws a different tenth, so one bad version does not always hit the same.
    other = chosen(10, V1)
    assert 60 <= len(other) <= 140 and other != ten  # binomial: sd ~9.5
    assert all(0 <= place(m, "demo", V2) < 1 for m in MACHINES)


def test_decision_only_holds_back() -> None:
    m = MACHINES[0]
    assert decide(None, "demo", V2, None).selected  # nothing staged: everyone
    assert not decide(Rollout("demo", V2, 0), "demo", V2, m).selected  # stopped
    assert decide(Rollout("demo", V2, 100), "demo", V2, None).selected
    # A rollout naming another version (or image) holds this one until it is staged.
    assert decide(Rollout("demo", V1, 100), "demo", V2, m).percent == 0
    assert not decide(Rollout("other", V2, 100), "demo", V2, m).selected


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not JSON"),
    (b"\xff", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"format": 1, "name": "demo", "version": "1", "percent": 10, "x": 1}', "unknown key 'x'"),
    (b'{"format": 1, "name": "demo", "version": "1"}', "missing key 'percent'"),
    (b'{"format": 2, "name": "demo", "version": "1", "percent": 10}', "unsupported format"),
    (b'{"format": true, "name": "demo", "version": "1", "percent": 10}', "unsupported format"),
    (b'{"format": 1, "name": "../x", "version": "1", "percent": 10}', "not a valid image name"),
    (b'{"format": 1, "name": "demo", "version": "", "percent": 10}', "not a valid image version"),
    (b'{"format": 1, "name": "demo", "version": "1", "percent": 101}', "percent must be"),
    (b'{"format": 1, "name": "demo", "version": "1", "percent": -1}', "percent must be"),
    (b'{"format": 1, "name": "demo", "version": "1", "percent": 10.5}', "percent must be"),
    (b'{"format": 1, "name": "demo", "version": "1", "percent": true}', "percent must be"),
    (b" " * (LIMIT + 1), "larger than"),
])
def test_rollout_parser_refuses(data: bytes, message: str) -> None:
    with pytest.raises(RolloutError, match=f"^https://x/rollout.json: .*{message}"):
        parse(data, "https://x/rollout.json")


def test_roundtrip() -> None:
    r = Rollout("demo", V2, 10)
    assert parse(r.dumps(), "x") == r


def test_machine_id_is_read_inside_the_sysroot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (tmp_path / "machine-id").write_text(MACHINES[1] + "\n")
    os.symlink(tmp_path / "machine-id", root / "etc/machine-id")  # absolute: inside root
    with pytest.raises(Exception, match="cannot place this machine"):
        machine_id(root)
    os.unlink(root / "etc/machine-id")
    (root / "etc/machine-id").write_text("uninitialized\n")
    with pytest.raises(Exception, match="not a machine id"):
        machine_id(root)
    (root / "etc/machine-id").write_text(MACHINES[1] + "\n")
    assert machine_id(root) == MACHINES[1]


def test_rollout_verb_publishes_a_signed_file(tmp_path: Path) -> None:
    key = signing_key()
    output = tmp_path / "out"
    publish(output, "demo", V1, [fixture_packages()["empty"]], key)
    result = rpmimg("rollout", output, "demo", "10", "--sign-key", key.secret, "--json")
    assert json.loads(result.out) == {"image": "demo", "version": V1, "percent": 10}
    data = (output / "images/demo/rollout.json").read_bytes()
    assert parse(data, "x") == Rollout("demo", V1, 10)
    sig = (output / "images/demo/rollout.json.asc").read_bytes()
    assert verify_detached(data, sig, Keyring.from_files([key.public]), "x") == key.fingerprint
    assert oct((output / "images/demo/rollout.json.asc").stat().st_mode & 0o777) == "0o644"
    assert not [p for p in (output / "images/demo").iterdir() if p.name.startswith(".tmp")]
    # Refusals: one line, nothing changed.
    for argv, message in (
        (["200"], "percent must be an integer from 0 to 100"),
        (["10", "--version", "20990101.1"], "has no version '20990101.1'"),
    ):
        bad = rpmimg("rollout", output, "demo", *argv, "--sign-key", key.secret, check=False)
        assert bad.code == 1 and message in bad.err and len(bad.err.splitlines()) == 1
    bad = rpmimg("rollout", output, "../demo", "10", "--sign-key", key.secret, check=False)
    assert bad.code == 1 and "not an image name" in bad.err
    bad = rpmimg("rollout", output, "demo", "10", "--sign-key", tmp_path / "nokey", check=False)
    assert bad.code == 1 and "does not exist" in bad.err
    assert (output / "images/demo/rollout.json").read_bytes() == data
