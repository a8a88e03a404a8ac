"""The real `rpmimg deploy` and `rpmimg compose` against a hostile HTTP server on 127.0.0.1.

Each case asserts the exit code, the one-line message naming the URL, that nothing beyond
the allowed size was written, and that the lock is free again afterwards. Peak memory is
the command's maximum RSS as GNU time reports it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploytools import Images, deploy, state_of
from hostile_httpd import Mode, Rule, serve

from benchmarks.measure import btrfs_data_used
from fixtures.repos import build_repo, package

pytest_plugins = ("deployenv",)

MB = 1 << 20
TIME = "/usr/bin/time"
# A deadline of three seconds whatever the size, so that the trickle cases stay quick.
FAST = {"RPMIMG_FETCH_DEADLINE_BASE": "3", "RPMIMG_FETCH_MIN_RATE": "1e12",
        "RPMIMG_FETCH_IDLE_TIMEOUT": "2", "RPMIMG_FETCH_BACKOFF": "0.05"}


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str
    peak_rss: int  # bytes
    seconds: float

    def error_line(self) -> str:
        """The error the CLI printed, checked to be one line, the last (progress steps before
        it are fine), with no traceback."""
        lines = self.err.strip().splitlines()
        errors = [line for line in lines if line.startswith("rpmimg:")]
        assert len(errors) == 1 and lines[-1] == errors[0], self.err
        assert errors[0].startswith("rpmimg: error: ") and "Traceback" not in self.err, self.err
        return errors[0].removeprefix("rpmimg: error: ")


def measured(*args: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Run:
    """Run `rpmimg ARGS` under GNU time for its peak RSS. (wait4 from here would not do: a
    child's maximum RSS starts at the RSS of the process it was forked from, here pytest.)"""
    if not os.access(TIME, os.X_OK):
        pytest.skip(f"needs {TIME} (Debian package time) to measure memory")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "rss")
        started = time.monotonic()
        proc = subprocess.run([TIME, "-f", "%M", "-o", report, sys.executable, "-m", "rpmimg",
                               *map(os.fspath, args)], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, check=False)
        seconds = time.monotonic() - started
        peak_kib = int(report.read_text().split()[-1])
    return Run(proc.returncode, proc.stdout, proc.stderr, peak_kib * 1024, seconds)


def deploy_args(sysroot: Path, images: Images, url: str) -> list[str | os.PathLike[str]]:
    return ["deploy", "--sysroot", sysroot, "--keyring", images.key.public, "--json", url]


def url_of(base: str, images: Images, manifest: Path) -> str:
    return base + os.fspath(manifest.relative_to(images.output))


def untouched(sysroot: Path) -> None:
    """Nothing was deployed and no partial file is bigger than it may be."""
    assert not (sysroot / "@rpmimg/state.json").exists() or state_of(sysroot)["deployments"] == []
    # A manifest refused before the lock is taken leaves no @rpmimg at all.
    deployments = sysroot / "@rpmimg/deployments"
    assert not deployments.exists() or list(deployments.iterdir()) == []


def zst_of(manifest: Path) -> tuple[str, int, str]:
    import json

    (pkg,) = json.loads(manifest.read_text())["packages"]
    return Path(pkg["zstd"]["location"]).name, int(pkg["zstd"]["size"]), str(pkg["sha256"])


def test_gzip_bomb_manifest_is_never_inflated(sysroot: Path, images: Images) -> None:
    with serve(images.output, {"/manifest.json": Rule(Mode.GZIP_BOMB, size=2 << 30)}) as web:
        url = url_of(web.url, images, images.v1)
        run = measured(*deploy_args(sysroot, images, url))
    assert run.code == 1
    # The 2 MiB of gzip reach the signature check as they are, and fail it.
    line = run.error_line()
    assert line.startswith(f"{url}: ") and "signature" in line.lower(), line
    baseline = measured("status", "--sysroot", sysroot)  # any command on this sysroot
    print(f"deploy, 2 GiB gzip-bomb manifest: peak RSS {run.peak_rss / MB:.1f} MB "
          f"(rpmimg status: {baseline.peak_rss / MB:.1f} MB)")
    assert run.peak_rss < 100 * MB, f"peak RSS {run.peak_rss / MB:.0f} MB"
    untouched(sysroot)


@pytest.mark.parametrize("mode", [Mode.HUGE, Mode.ENDLESS])
def test_huge_manifest_is_cut_at_its_maximum(sysroot: Path, images: Images, mode: Mode) -> None:
    with serve(images.output, {"/manifest.json": Rule(mode, size=2 << 30)}) as web:
        url = url_of(web.url, images, images.v1)
        run = measured(*deploy_args(sysroot, images, url))
        sent = web.sent.get("/" + os.fspath(images.v1.relative_to(images.output)), 0)
    assert run.code == 1
    assert run.error_line().startswith(f"{url}: ")
    assert run.error_line().endswith("more than the 16777216-byte maximum for a file of unknown size")
    print(f"deploy, 2 GiB manifest ({mode.name}): peak RSS {run.peak_rss / MB:.1f} MB, "
          f"{sent / MB:.1f} MB sent")
    assert run.peak_rss < 100 * MB, f"peak RSS {run.peak_rss / MB:.0f} MB"
    assert sent < 64 * MB
    untouched(sysroot)


def test_endless_signature_is_cut_at_its_maximum(sysroot: Path, images: Images) -> None:
    with serve(images.output, {"/manifest.json.asc": Rule(Mode.ENDLESS)}) as web:
        url = url_of(web.url, images, images.v1)
        run = measured(*deploy_args(sysroot, images, url))
    assert run.code == 1
    assert run.error_line() == (f"{url}.asc: the server sent more than the 65536-byte maximum "
                                "for a file of unknown size")
    untouched(sysroot)


@pytest.mark.parametrize("mode", [Mode.HUGE, Mode.ENDLESS, Mode.LONG_LENGTH])
def test_3_gib_body_for_a_small_package_writes_at_most_its_size(
        sysroot: Path, images: Images, mode: Mode) -> None:
    zst, size, sha = zst_of(images.v0)
    used = btrfs_data_used(sysroot)
    with serve(images.output, {zst: Rule(mode, size=3 << 30)}) as web:
        url = url_of(web.url, images, images.v0)
        run = measured(*deploy_args(sysroot, images, url))
        sent = sum(n for p, n in web.sent.items() if p.endswith(zst))
    assert run.code == 1
    line = run.error_line()
    assert line.startswith("empty-") and f"{zst}: " in line
    assert line.endswith(f"more than the {size} bytes expected"), line
    downloads = sysroot / "@rpmimg/staging/downloads"
    assert all(p.stat().st_size <= size for p in downloads.iterdir())
    assert not (downloads / f"{sha}.rpm.zst.part").exists()  # a liar's bytes are not kept
    # The filesystem grew by the deploy's own metadata at most, not by the body.
    assert btrfs_data_used(sysroot) - used <= 64 << 10
    assert sent < 3 << 30  # the client left long before the end
    untouched(sysroot)


def test_trickling_server_is_given_up_and_the_lock_released(sysroot: Path, images: Images) -> None:
    zst, size, sha = zst_of(images.v0)
    with serve(images.output, {zst: Rule(Mode.TRICKLE, interval=0.2, times=1)}) as web:
        url = url_of(web.url, images, images.v0)
        with tempfile.TemporaryFile() as err:
            started = time.monotonic()
            first = subprocess.Popen(
                [sys.executable, "-m", "rpmimg", *map(os.fspath, deploy_args(sysroot, images, url))],
                stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **FAST})
            while not any(r.path.endswith(zst) for r in web.requests):
                assert first.poll() is None and time.monotonic() - started < 30
                time.sleep(0.05)
            # While the trickle goes on, the sysroot is locked.
            held = measured("cleanup", "--sysroot", sysroot, "--lock-wait", "0")
            assert held.code == 1 and f"(pid {first.pid})" in held.error_line()
            assert first.wait(30) == 1
            trickled = time.monotonic() - started
            err.seek(0)
            message = err.read().decode().strip()
        assert message.startswith("rpmimg: error: empty-") and f"{zst}: gave up after 3." in message
        assert "past the deadline" in message and len(message.splitlines()) == 1
        part = sysroot / "@rpmimg/staging/downloads" / f"{sha}.rpm.zst.part"
        kept = part.stat().st_size
        assert 0 < kept < size  # what arrived is kept for a resume, no more
        # Python's start-up and the manifest come on top of the 3 s deadline.
        assert trickled < 10
        # The lock is free: the next command takes it at once, and resumes the download.
        second = deploy(sysroot, url, images.key, "--lock-wait", "0").json()
        assert second["outcome"] == "deployed"
        ranges = [r.range for r in web.requests if r.path.endswith(zst)]
        assert ranges == [None, f"bytes={kept}-"]


def test_a_trickling_manifest_does_not_hold_the_lock(sysroot: Path, images: Images) -> None:
    with serve(images.output, {"/manifest.json": Rule(Mode.TRICKLE, interval=0.2, times=1)}) as web:
        url = url_of(web.url, images, images.v0)
        started = time.monotonic()
        first = subprocess.Popen(
            [sys.executable, "-m", "rpmimg", *map(os.fspath, deploy_args(sysroot, images, url))],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **FAST})
        while not any(r.path.endswith("/manifest.json") for r in web.requests):
            assert first.poll() is None and time.monotonic() - started < 30
            time.sleep(0.05)
        # The manifest is read before the lock is taken: other commands go on meanwhile.
        other = measured("cleanup", "--sysroot", sysroot, "--lock-wait", "0")
        assert first.poll() is None, "the trickle should still be going on"
        assert other.code == 0, other.error_line()
        _, err = first.communicate(timeout=30)
    assert first.returncode == 1 and "past the deadline" in err.decode()
    untouched(sysroot)


def test_redirect_loop_is_bounded(sysroot: Path, images: Images) -> None:
    with serve(images.output, {"/manifest.json": Rule(Mode.REDIRECT_LOOP)}) as web:
        url = url_of(web.url, images, images.v0)
        run = measured(*deploy_args(sysroot, images, url))
        hops = sum(1 for r in web.requests if r.path.endswith("/manifest.json"))
    assert run.code == 1
    assert run.error_line().startswith(f"{url}: more than 5 redirects")
    assert hops == 6
    untouched(sysroot)


def test_redirect_to_another_port_is_followed_within_bounds(sysroot: Path, images: Images) -> None:
    with serve(images.output) as mirror:
        target = url_of(mirror.url, images, images.v0)
        with serve(images.output, {"/manifest.json": Rule(Mode.REDIRECT, target=target)}) as web:
            result = deploy(sysroot, url_of(web.url, images, images.v0), images.key).json()
    assert result["outcome"] == "deployed"
    assert [r.path for r in mirror.requests] == ["/" + os.fspath(images.v0.relative_to(images.output))]


def test_bad_limits_in_the_environment_are_one_line(sysroot: Path, images: Images) -> None:
    with serve(images.output) as web:
        run = measured(*deploy_args(sysroot, images, url_of(web.url, images, images.v0)),
                       env={"RPMIMG_FETCH_IDLE_TIMEOUT": "soon"})
        assert web.requests == []
    assert run.code == 1
    assert run.error_line() == "RPMIMG_FETCH_IDLE_TIMEOUT='soon': not a number"



# --- compose against a hostile mirror --------------------------------------------------------

needs_rpmbuild = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("rpmbuild", "createrepo_c")),
    reason="needs rpmbuild and createrepo_c")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site with a one-package repository under repo/ and a key file beside it."""
    site = tmp_path_factory.mktemp("mirror")
    build_repo([package("app", files=("/usr/bin/app",))], site / "repo")
    (site / "key.asc").write_text("not really a key\n")
    return site


def compose_run(tmp_path: Path, base: str, out: Path, *, gpgkey: str | None = None,
                env: Mapping[str, str] | None = None) -> Run:
    definition = tmp_path / "image.toml"
    # A key from a URL must be pinned; the key is fetched before its fingerprint is checked.
    key = (f'gpgkey = "{gpgkey}"\ngpgkey_fingerprint = "{"0" * 40}"\n' if gpgkey else "")
    definition.write_text(f'name = "demo"\narch = "x86_64"\npackages = ["app"]\n\n'
                          f'[[repo]]\nname = "main"\nurl = "{base}repo/"\n{key}')
    return measured("compose", definition, "-o", out, env=env)


def package_path(site: Path) -> str:
    (rpm,) = (site / "repo" / "Packages").glob("app-*.rpm")
    return "/" + os.fspath(rpm.relative_to(site))


def published(out: Path) -> list[str]:
    return sorted(os.listdir(out / "images")) if (out / "images").is_dir() else []


def partial_files(out: Path) -> dict[str, int]:
    return {os.fspath(p.relative_to(out)): p.stat().st_size
            for p in out.rglob("*.part") if p.is_file()}


@needs_rpmbuild
def test_compose_reads_a_package_only_up_to_its_listed_size(tmp_path: Path, mirror: Path) -> None:
    path = package_path(mirror)
    size = (mirror / path.lstrip("/")).stat().st_size
    out = tmp_path / "out"
    with serve(mirror, {path: Rule(Mode.ENDLESS, size=3 << 30)}) as web:
        run = compose_run(tmp_path, web.url, out)
    assert run.code == 1
    assert run.error_line() == (f"app-1.0-1.noarch: {web.url}{path.lstrip('/')}: the server sent "
                                f"more than the {size} bytes expected")
    assert published(out) == [] and partial_files(out) == {}


@needs_rpmbuild
@pytest.mark.parametrize("what", ["repomd", "key"])
def test_compose_caps_files_of_unknown_size(tmp_path: Path, mirror: Path, what: str) -> None:
    target, limit = ("/repo/repodata/repomd.xml", 16 << 20) if what == "repomd" else ("/key.asc", 1 << 20)
    out = tmp_path / "out"
    with serve(mirror, {target: Rule(Mode.ENDLESS, size=1 << 30)}) as web:
        run = compose_run(tmp_path, web.url, out,
                          gpgkey=web.url + "key.asc" if what == "key" else None)
    assert run.code == 1
    line = run.error_line()
    assert f"{web.url}{target.lstrip('/')}: the server sent more than the {limit}-byte maximum" in line
    print(f"compose, endless {what}: peak RSS {run.peak_rss / MB:.1f} MB")
    assert run.peak_rss < 200 * MB
    assert published(out) == [] and all(n <= limit for n in partial_files(out).values())


@needs_rpmbuild
def test_compose_gives_up_on_a_trickling_mirror_and_releases_the_lock(tmp_path: Path,
                                                                      mirror: Path) -> None:
    path = package_path(mirror)
    out = tmp_path / "out"
    with serve(mirror, {path: Rule(Mode.TRICKLE, interval=0.2, times=1)}) as web:
        definition_dir = tmp_path / "first"
        definition_dir.mkdir()
        done: list[Run] = []
        thread = threading.Thread(target=lambda: done.append(
            compose_run(definition_dir, web.url, out, env=FAST)))
        thread.start()
        started = time.monotonic()
        while not any(r.path == path for r in web.requests):
            assert thread.is_alive() and time.monotonic() - started < 30
            time.sleep(0.05)
        held = compose_run(tmp_path, web.url, out)
        thread.join(30)
        (first,) = done
        assert held.code == 1
        assert re.fullmatch(rf"{re.escape(str(out))}: another compose is writing to this output "
                            r"\(pid \d+\)", held.error_line()), held.error_line()
        assert first.code == 1
        line = first.error_line()
        assert line.startswith(f"app-1.0-1.noarch: {web.url}{path.lstrip('/')}: gave up after 3.")
        assert "past the deadline" in line
        assert time.monotonic() - started < 10
        assert published(out) == []
        # The output lock is free again: the next compose runs, and publishes.
        again = compose_run(tmp_path, web.url, out)
    assert again.code == 0, again.err
    assert published(out) == ["demo"]
