"""`rpmimg check` and `upgrade` against a channel served by a real HTTP server on 127.0.0.1
that counts requests and answers conditional requests as a static web server does."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploytools import V1, V2, Images, Result, rpmimg, state_of
from servers import Faults, http_server
from test_rollout import MACHINES

from deploy.rollout import selected

pytest_plugins = ("deployenv",)

FAST = {"RPMIMG_FETCH_ATTEMPTS": "2", "RPMIMG_FETCH_BACKOFF": "0.01",
        "RPMIMG_FETCH_CONNECT_TIMEOUT": "2", "RPMIMG_FETCH_IDLE_TIMEOUT": "2"}
UPDATE_AVAILABLE = 10
LATEST = "/images/demo/latest/manifest.json"


@dataclass
class Channel:
    sysroot: Path
    output: Path
    faults: Faults
    base: str

    def latest(self, version: str) -> None:
        """Point `latest` at version, as a new compose does."""
        link = self.output / "images/demo/latest"
        tmp = link.with_name(".latest.tmp")
        tmp.symlink_to(version)
        os.replace(tmp, link)

    def configure(self, *lines: str, urls: list[str] | None = None) -> None:
        conf = self.sysroot / "etc/rpmimg/channel.conf"
        conf.write_text(f'image = "demo"\nurls = {json.dumps(urls or [self.base])}\n'
                        + "".join(f"{line}\n" for line in lines))

    def run(self, verb: str, *args: str, env: dict[str, str] | None = None) -> Result:
        return rpmimg(verb, "--sysroot", self.sysroot, *args, env={**FAST, **(env or {})},
                      check=False)

    def served(self) -> list[tuple[str, int]]:
        answers = list(self.faults.answers)
        self.faults.answers.clear()
        self.faults.requests.clear()
        return answers


@pytest.fixture
def channel(sysroot: Path, images: Images, tmp_path: Path) -> Iterator[Channel]:
    """images.output copied (pool and all) with `latest` at V1, served over HTTP; the
    sysroot trusts the key in its keys.d and has a machine id."""
    output = tmp_path / "output"
    shutil.copytree(images.output, output, symlinks=True)
    (sysroot / "etc/rpmimg/keys.d").mkdir(parents=True)
    shutil.copy(images.key.public, sysroot / "etc/rpmimg/keys.d/vendor.asc")
    (sysroot / "etc/machine-id").write_text(MACHINES[0] + "\n")
    faults = Faults()
    with http_server(output, faults) as base:
        ch = Channel(sysroot, output, faults, base + "/")
        ch.latest(V1)
        ch.configure()
        yield ch


def _packages(manifest: Path) -> dict[str, dict[str, object]]:
    return {str(p["sha256"]): p for p in json.loads(manifest.read_text())["packages"]}


def test_check_and_upgrade(channel: Channel, images: Images) -> None:
    first = channel.run("check", "--json")
    assert first.code == UPDATE_AVAILABLE, first.err
    assert first.json()["current"] is None and first.json()["version"] == V1
    up = channel.run("upgrade", "--json")
    assert up.code == 0, up.err
    assert up.json()["deployed"]["deployment"]["version"] == V1 and state_of(channel.sysroot)["default"] == "1"
    channel.served()

    # An unchanged channel: one conditional request, answered 304, nothing new.
    same = channel.run("check")
    assert same.code == 0, same.err
    assert channel.served() == [(LATEST, 304)]
    assert "nothing new" in same.out and V1 in same.out

    # A new compose: the diff and what it would download (what the store lacks, as zstd).
    channel.latest(V2)
    new = channel.run("check", "--json")
    assert new.code == UPDATE_AVAILABLE, new.err
    found = new.json()
    assert found["current"] == {"id": "1", "image": "demo", "version": V1}
    assert found["version"] == V2 and found["result"] == "update available"
    changes = {(c["kind"], c["name"]) for c in found["diff"]["changes"]}
    assert {n for _, n in changes} >= set(images.changed) and ("added", "newcomer") in changes
    assert found["diff"]["old"] == V1 and found["diff"]["new"] == V2
    v1, v2 = _packages(images.v1), _packages(images.v2)
    lacking = [p for sha, p in v2.items() if sha not in v1]
    assert found["download_packages"] == len(lacking)
    assert found["download_bytes"] == sum(int(p["zstd"]["size"]) for p in lacking)  # type: ignore[index]
    # The text form shows the same diff lines as `rpmimg diff`.
    text = channel.run("check")
    assert text.code == UPDATE_AVAILABLE and "  added      newcomer." in text.out
    channel.served()

    up = channel.run("upgrade", "--json")
    assert up.code == 0, up.err
    deployed = up.json()["deployed"]
    assert deployed["deployment"] == {"id": "2", "image": "demo", "version": V2}
    assert deployed["fetched"] == len(lacking)
    assert state_of(channel.sysroot)["default"] == "2"
    # Deployed from the version's own URL, not from `latest`.
    assert any(p == f"/images/demo/{V2}/manifest.json" for p, _ in channel.served())
    after = channel.run("check")
    assert after.code == 0 and channel.served() == [(LATEST, 304)]

    status = rpmimg("status", "--sysroot", channel.sysroot, "--json", "--no-size").json()
    assert status["channel"]["image"] == "demo" and status["channel"]["urls"] == [channel.base]  # type: ignore[index]
    last = status["last_check"]
    assert last["result"] == "up to date" and last["version"] == V2 and last["checked"].endswith("Z")  # type: ignore[index]
    line = rpmimg("status", "--sysroot", channel.sysroot, "--no-size").out
    assert "channel: demo from" in line and "up to date" in line


def test_a_failing_mirror_is_skipped(channel: Channel) -> None:
    dead = Faults(fail_first={"": 10**6})  # answers 503 to everything
    with ExitStack() as stack:
        dead_base = stack.enter_context(http_server(channel.output, dead)) + "/"
        channel.configure(urls=[dead_base, channel.base])
        up = channel.run("upgrade", "--json")
    assert up.code == 0, up.err
    assert up.json()["deployed"]["deployment"]["version"] == V1 and up.json()["check"]["mirror"] == channel.base
    assert dead.requests and all(p == LATEST for p, _ in dead.requests)
    assert "503" in up.err  # the skipped mirror is named in a warning
    # Every mirror failing: one error naming each, nothing changed.
    before = state_of(channel.sysroot)
    with ExitStack() as stack:
        dead_base = stack.enter_context(http_server(channel.output, Faults(fail_first={"": 10**6})))
        channel.configure(urls=[dead_base + "/", "http://127.0.0.1:9/"])
        channel.latest(V2)
        bad = channel.run("upgrade")
    assert bad.code == 1 and "no mirror of the channel gave a verified manifest" in bad.err
    assert "503" in bad.err and "127.0.0.1:9" in bad.err
    assert state_of(channel.sysroot) == before


def test_a_bad_signature_is_reported_and_nothing_deployed(channel: Channel) -> None:
    assert channel.run("upgrade").code == 0
    before = state_of(channel.sysroot)
    channel.latest(V2)
    manifest = channel.output / "images/demo" / V2 / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"demo"', b'"demo" ', 1))
    for verb in ("check", "upgrade"):
        bad = channel.run(verb)
        assert bad.code == 1, bad.out
        assert "BAD signature" in bad.err and len(bad.err.splitlines()) == 1
    assert state_of(channel.sysroot) == before
    assert sorted(p.name for p in (channel.sysroot / "@rpmimg/deployments").iterdir()) == ["1"]
    status = rpmimg("status", "--sysroot", channel.sysroot, "--json", "--no-size").json()
    assert status["last_check"]["result"] == "error"  # type: ignore[index]
    assert "BAD signature" in status["last_check"]["error"]  # type: ignore[index]


def _rollout(channel: Channel, images: Images, percent: int, *args: str) -> None:
    rpmimg("rollout", channel.output, "demo", str(percent), "--sign-key", images.key.secret, *args)


def test_staged_rollout(channel: Channel, images: Images) -> None:
    assert channel.run("upgrade").code == 0
    channel.latest(V2)
    _rollout(channel, images, 0)  # published, then held at 0%
    held = channel.run("check", "--json")
    assert held.code == 0 and held.json()["result"] == "held by rollout"
    assert held.json()["rollout"] == {"percent": 0, "published": True, "selected": False}
    assert channel.run("upgrade").code == 0 and state_of(channel.sysroot)["default"] == "1"
    channel.served()
    # Unchanged while held: the manifest and the rollout file, both answered 304.
    assert channel.run("check").code == 0
    assert channel.served() == [(LATEST, 304), ("/images/demo/rollout.json", 304)]

    # 10%: this machine's stable hash decides; a machine outside the tenth waits.
    inside = next(m for m in MACHINES if selected(m, "demo", V2, 10))
    outside = next(m for m in MACHINES if not selected(m, "demo", V2, 10))
    _rollout(channel, images, 10)
    (channel.sysroot / "etc/machine-id").write_text(outside + "\n")
    assert channel.run("check").code == 0
    (channel.sysroot / "etc/machine-id").write_text(inside + "\n")
    assert channel.run("check").code == UPDATE_AVAILABLE

    # An unsigned or tampered rollout file moves nobody: an error, nothing deployed.
    rollout = channel.output / "images/demo/rollout.json"
    rollout.write_bytes(rollout.read_bytes().replace(b"10", b"100"))
    bad = channel.run("upgrade")
    assert bad.code == 1 and "BAD signature" in bad.err and "rollout.json" in bad.err
    assert state_of(channel.sysroot)["default"] == "1"
    # A server sending a huge rollout file: refused at the first byte past 4 KiB.
    rollout.write_bytes(b" " * 100_000)
    huge = channel.run("check")
    assert huge.code == 1 and "rollout.json" in huge.err and "4096" in huge.err
    # A rollout staging an older version holds the newer one.
    _rollout(channel, images, 100, "--version", V1)
    assert channel.run("check", "--json").json()["result"] == "held by rollout"
    # A machine configured not to follow rollouts (a canary) takes it at once.
    channel.configure("rollout = false")
    up = channel.run("upgrade", "--json")
    assert up.code == 0 and up.json()["deployed"]["deployment"]["version"] == V2


def test_upgrade_reboots_by_policy(channel: Channel, tmp_path: Path) -> None:
    # logind is not running here: systemd-inhibit is a script listing no inhibitors.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemd-inhibit").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "systemd-inhibit").chmod(0o755)
    mark = tmp_path / "rebooted"
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "RPMIMG_REBOOT_COMMAND": f"touch {mark}"}
    channel.configure('reboot = "never"')
    up = channel.run("upgrade", "--reboot", env=env)
    assert up.code == 0 and "not now" in up.out and not mark.exists()
    channel.latest(V2)
    channel.configure('reboot = "immediately"')
    up = channel.run("upgrade", "--reboot", "--json", env=env)
    assert up.code == 0, up.err
    assert up.json()["deployed"]["deployment"]["version"] == V2 and up.json()["reboot"]["rebooted"]
    assert mark.exists()
    # Nothing new and nothing booted here to differ from the default: no second reboot.
    mark.unlink()
    again = channel.run("upgrade", "--reboot", env=env)
    assert again.code == 0 and not mark.exists()


def test_a_damaged_memory_of_the_last_check_is_not_trusted(channel: Channel) -> None:
    assert channel.run("upgrade").code == 0
    memory = channel.sysroot / "@rpmimg/channel.json"
    value = json.loads(memory.read_text())
    # The remembered manifest altered (validators kept): the 304 is not taken on trust.
    value["manifest"]["data"] = base64.b64encode(b'{"format": 1}').decode()
    memory.write_text(json.dumps(value))
    channel.served()
    result = channel.run("check", "--json")
    assert result.code == 0, result.err
    assert "does not verify; fetching it again" in result.err
    assert result.json()["requests"] == 3  # the 304, then the manifest and its signature
    assert channel.served()[:2] == [(LATEST, 304), (LATEST, 200)]
    # Garbage instead of JSON: ignored with a warning, the channel asked afresh.
    memory.write_bytes(b"\x00garbage")
    result = channel.run("check")
    assert result.code == 0 and "channel.json: ignored" in result.err
    assert channel.served()[0] == (LATEST, 200)
    assert channel.run("check").code == 0 and channel.served() == [(LATEST, 304)]


def test_no_or_broken_channel_is_one_line_and_status_still_works(channel: Channel) -> None:
    conf = channel.sysroot / "etc/rpmimg/channel.conf"
    conf.unlink()
    none = channel.run("check")
    assert none.code == 1 and none.err.startswith("rpmimg: error: no channel configured")
    assert rpmimg("status", "--sysroot", channel.sysroot, "--json").json()["channel"] is None
    conf.write_text('image = "demo"\nurls = ["ftp://x/"]\n')
    for verb in ("check", "upgrade"):
        bad = channel.run(verb)
        assert bad.code == 1 and len(bad.err.splitlines()) == 1
        assert "/etc/rpmimg/channel.conf: urls: 'ftp://x/' is not an http(s)" in bad.err
    status = rpmimg("status", "--sysroot", channel.sysroot)
    assert "channel: not usable: /etc/rpmimg/channel.conf: urls" in status.out
    assert channel.served() == []  # nothing was asked of the server
