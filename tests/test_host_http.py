"""host.http against the hostile server on 127.0.0.1: every download bounded in bytes and time."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_httpd import Mode, Rule, gzip_bomb, self_signed, serve

from host.http import DownloadError, Limits, TooLarge, download, download_bytes, download_file
from host.httpconn import _tls_context

DATA = os.urandom(200_000)
# Quick tests: short waits, a deadline of a few seconds whatever the size.
FAST = Limits(connect_timeout=2, idle_timeout=2, deadline_base=3, min_rate=1e12, attempts=3,
              backoff=0.01)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    (root / "a.rpm").write_bytes(DATA)
    (root / "small").write_bytes(b"x" * 1000)
    return root


def fetch(url: str, part: Path, **kw: object) -> str:
    kw.setdefault("limits", FAST)
    return download_file(url, part, **kw)  # type: ignore[arg-type]


def test_honest_download_asks_for_identity(tmp_path: Path, site: Path) -> None:
    seen: list[int] = []
    with serve(site) as web:
        final = fetch(web.url + "a.rpm", tmp_path / "a.part", size=len(DATA), progress=seen.append)
    assert final == web.url + "a.rpm"
    assert (tmp_path / "a.part").read_bytes() == DATA and sum(seen) == len(DATA)
    assert [r.accept_encoding for r in web.requests] == ["identity"]


def test_default_deadline_grows_with_the_size() -> None:
    limits = Limits()
    assert (limits.connect_timeout, limits.idle_timeout, limits.max_redirects) == (15, 30, 5)
    assert limits.deadline(0) == 60
    assert limits.deadline(1 << 30) == 60 + (1 << 30) / 16384  # 1 GiB: 18 h 12 min at 16 KiB/s
    env = {"RPMIMG_FETCH_IDLE_TIMEOUT": "0.5", "RPMIMG_FETCH_ATTEMPTS": "2",
           "RPMIMG_FETCH_MIN_RATE": "1000", "RPMIMG_FETCH_DEADLINE_BASE": "1"}
    configured = Limits.from_environment(env)
    assert (configured.idle_timeout, configured.attempts) == (0.5, 2)
    assert configured.deadline(5000) == 6
    assert Limits.from_environment({}) == limits
    assert Limits.from_environment({"RPMIMG_FETCH_MAX_REDIRECTS": "0"}).max_redirects == 0
    for bad in ({"RPMIMG_FETCH_ATTEMPTS": "many"}, {"RPMIMG_FETCH_ATTEMPTS": "0"},
                {"RPMIMG_FETCH_MIN_RATE": "nan"}, {"RPMIMG_FETCH_IDLE_TIMEOUT": "-1"},
                {"RPMIMG_FETCH_CONNECT_TIMEOUT": "0"}, {"RPMIMG_FETCH_DEADLINE_BASE": "inf"},
                {"RPMIMG_FETCH_MAX_REDIRECTS": "1.5"}):
        with pytest.raises(DownloadError, match=f"^{next(iter(bad))}="):
            Limits.from_environment(bad)


@pytest.mark.parametrize("mode", [Mode.HUGE, Mode.ENDLESS, Mode.LONG_LENGTH])
def test_body_larger_than_the_size_stops_at_one_byte_more(tmp_path: Path, site: Path,
                                                          mode: Mode) -> None:
    part = tmp_path / "small.part"
    rule = Rule(mode, size=3 << 30)
    with serve(site, {"/small": rule}) as web, pytest.raises(TooLarge) as e:
        fetch(web.url + "small", part, size=1000)
    assert str(e.value).startswith(web.url + "small: ")
    assert "more than the 1000 bytes expected" in str(e.value)
    assert not part.exists()  # a liar's bytes are not kept for a resume
    # The server could send little more than the size before the client left.
    assert web.sent.get("/small", 0) < 8 << 20


def test_short_content_length_is_a_cut_that_resumes(tmp_path: Path, site: Path) -> None:
    rule = Rule(Mode.SHORT_LENGTH, size=100_000, times=1)
    with serve(site, {"/a.rpm": rule}) as web:
        fetch(web.url + "a.rpm", tmp_path / "a.part", size=len(DATA))
    assert (tmp_path / "a.part").read_bytes() == DATA
    assert [r.range for r in web.requests] == [None, f"bytes={len(DATA) - 100_000}-"]


def test_gzip_encoding_is_never_decoded(tmp_path: Path, site: Path) -> None:
    bomb = gzip_bomb(2 << 30)
    with serve(site, {"/manifest.json": Rule(Mode.GZIP_BOMB, size=2 << 30)}) as web:
        got = download_bytes(web.url + "manifest.json", 16 << 20, limits=FAST)
        assert got == bomb  # the wire bytes, 2 MiB, not 2 GiB inflated
        with pytest.raises(TooLarge, match="more than the 1048576-byte maximum"):
            download_bytes(web.url + "manifest.json", 1 << 20, limits=FAST)


def test_unknown_size_is_capped(tmp_path: Path, site: Path) -> None:
    with serve(site, {"/endless": Rule(Mode.ENDLESS)}) as web:
        assert download_bytes(web.url + "small", 1000, limits=FAST) == b"x" * 1000
        with pytest.raises(TooLarge, match=r"small: Content-Length 1000 from byte 0 is more than the 999-byte"):
            download_bytes(web.url + "small", 999, limits=FAST)
        with pytest.raises(TooLarge, match="the server sent more than the 4096-byte maximum"):
            download_bytes(web.url + "endless", 4096, limits=FAST)


@pytest.mark.parametrize("mode", [Mode.TRICKLE, Mode.TRICKLE_HEADERS, Mode.SILENT])
def test_trickle_is_given_up_at_the_deadline(tmp_path: Path, site: Path, mode: Mode) -> None:
    part = tmp_path / "small.part"
    with serve(site, {"/small": Rule(mode, interval=0.2)}) as web:
        started = time.monotonic()
        with pytest.raises(DownloadError, match=r"small: gave up after [3-7]\.\d s, past the deadline for 1000 bytes"):
            fetch(web.url + "small", part, size=1000)
        took = time.monotonic() - started
    # Not early, and far from the 200 s the trickle would take: the slack is for a loaded machine.
    assert 2.9 < took < 8
    assert part.stat().st_size < 1000  # what did arrive is kept for a resume


def test_idle_timeout_then_retries(tmp_path: Path, site: Path) -> None:
    limits = Limits(idle_timeout=0.3, deadline_base=30, attempts=2, backoff=0.01)
    with serve(site, {"/small": Rule(Mode.SILENT)}) as web:
        started = time.monotonic()
        with pytest.raises(DownloadError, match=r"small: failed after 2 attempts: no data for 0\.3 s"):
            fetch(web.url + "small", tmp_path / "p", size=1000, limits=limits)
        assert time.monotonic() - started < 2
        assert len(web.requests) == 2


def test_redirects_are_bounded_and_named(tmp_path: Path, site: Path) -> None:
    with serve(site) as other, serve(site, {
        "/loop": Rule(Mode.REDIRECT_LOOP),
        "/away": Rule(Mode.REDIRECT, target=other.url + "a.rpm"),
        "/gone": Rule(Mode.REDIRECT, target=other.url + "missing"),
        "/file": Rule(Mode.REDIRECT, target="file:///etc/passwd"),
    }) as web:
        with pytest.raises(DownloadError, match=r"loop: more than 5 redirects \(the last to .*/loop\)"):
            fetch(web.url + "loop", tmp_path / "p", size=1000)
        assert len(web.requests) == 6
        # Another host or port is followed (mirror networks redirect), with the same bounds.
        assert fetch(web.url + "away", tmp_path / "a", size=len(DATA)) == other.url + "a.rpm"
        with pytest.raises(TooLarge, match=rf"^{web.url}away \(redirected to {other.url}a.rpm\)"):
            fetch(web.url + "away", tmp_path / "b", size=1000)
        with pytest.raises(DownloadError, match=rf"gone \(redirected to {other.url}missing\): HTTP 404"):
            fetch(web.url + "gone", tmp_path / "c", size=1000)
        with pytest.raises(DownloadError, match="redirect to file:///etc/passwd refused"):
            fetch(web.url + "file", tmp_path / "d", size=1000)
        assert not (tmp_path / "d").stat().st_size


def test_no_redirects_when_configured(tmp_path: Path, site: Path) -> None:
    with serve(site) as other, serve(site, {"/away": Rule(Mode.REDIRECT, target=other.url + "a.rpm")}) as web:
        with pytest.raises(DownloadError, match="more than 0 redirects"):
            fetch(web.url + "away", tmp_path / "a", size=len(DATA),
                  limits=Limits(max_redirects=0))
    assert other.requests == []


def test_cut_resumes_with_range(tmp_path: Path, site: Path) -> None:
    seen: list[int] = []
    with serve(site, {"/a.rpm": Rule(Mode.CUT, size=70_000, times=2)}) as web:
        fetch(web.url + "a.rpm", tmp_path / "a.part", size=len(DATA), progress=seen.append)
    assert (tmp_path / "a.part").read_bytes() == DATA and sum(seen) == len(DATA)
    assert [r.range for r in web.requests] == [None, "bytes=70000-", "bytes=140000-"]


def test_range_ignored_restarts_cleanly(tmp_path: Path, site: Path) -> None:
    part = tmp_path / "a.part"
    part.write_bytes(DATA[:50_000])
    seen: list[int] = []
    with serve(site, {"/a.rpm": Rule(Mode.IGNORE_RANGE)}) as web:
        fetch(web.url + "a.rpm", part, size=len(DATA), progress=seen.append)
    assert part.read_bytes() == DATA and sum(seen) == len(DATA)
    assert [r.range for r in web.requests] == ["bytes=50000-"]


def test_wrong_content_range_restarts_without_range(tmp_path: Path, site: Path) -> None:
    part = tmp_path / "a.part"
    part.write_bytes(DATA[:50_000])
    with serve(site, {"/a.rpm": Rule(Mode.BAD_RANGE, times=1)}) as web:
        fetch(web.url + "a.rpm", part, size=len(DATA))
    assert part.read_bytes() == DATA
    assert [r.range for r in web.requests] == ["bytes=50000-", None]


def test_stale_partial_longer_than_the_file_is_dropped(tmp_path: Path, site: Path) -> None:
    part = tmp_path / "small.part"
    part.write_bytes(b"y" * 5000)
    with serve(site) as web:
        fetch(web.url + "small", part, size=1000)
    assert part.read_bytes() == b"x" * 1000
    assert [r.range for r in web.requests] == [None]


def test_transient_status_is_retried_then_final(tmp_path: Path, site: Path) -> None:
    with serve(site, {"/small": Rule(Mode.FAIL, statuses=[500, 503], times=2)}) as web:
        fetch(web.url + "small", tmp_path / "s", size=1000)
        assert len(web.requests) == 3
    with serve(site, {"/small": Rule(Mode.FAIL, statuses=[503] * 5)}) as web, \
            pytest.raises(DownloadError, match=r"small: failed after 3 attempts: HTTP 503"):
        fetch(web.url + "small", tmp_path / "t", size=1000)
    with serve(site, {"/small": Rule(Mode.FAIL, statuses=[403])}) as web, \
            pytest.raises(DownloadError, match=r"small: HTTP 403 Forbidden$") as e:
        fetch(web.url + "small", tmp_path / "u", size=1000)
    assert e.value.status == 403 and len(web.requests) == 1


def test_refused_connection_and_bad_urls(tmp_path: Path, site: Path) -> None:
    with serve(site) as web:
        url = web.url
    with pytest.raises(DownloadError, match=r"small: failed after 3 attempts: Connection refused"):
        fetch(url + "small", tmp_path / "p", size=1000)
    with pytest.raises(DownloadError, match="not an http"):
        fetch("ftp://127.0.0.1/x", tmp_path / "p", size=1)
    with pytest.raises(DownloadError, match="not a valid port"):
        fetch("http://127.0.0.1:99999/x", tmp_path / "p", size=1)


def test_memory_sink_resumes_too(site: Path) -> None:
    sink = io.BytesIO(DATA[:1000])
    with serve(site) as web:
        download(web.url + "a.rpm", sink, size=len(DATA), limits=FAST)
    assert sink.getvalue() == DATA
    assert [r.range for r in web.requests] == ["bytes=1000-"]


def test_part_is_not_followed_through_a_symlink(tmp_path: Path, site: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "link.part").symlink_to(victim)
    with serve(site) as web, pytest.raises(OSError):
        fetch(web.url + "small", tmp_path / "link.part", size=1000)
    assert victim.read_bytes() == b"keep"


def test_proxy_from_the_environment(tmp_path: Path, site: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(site) as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        # The proxy is asked for the absolute URL of a host that does not exist.
        got = download_bytes("http://mirror.invalid/small", 1000, limits=FAST)
    assert got == b"x" * 1000
    assert [r.path for r in proxy.requests] == ["/small"]


@pytest.fixture
def certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a certificate")
    pair = self_signed(tmp_path)
    yield pair
    _tls_context.cache_clear()  # forget the test's CA for the next user


def test_https_checks_the_certificate_and_keeps_the_bounds(
        tmp_path: Path, site: Path, certificate: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(site, {"/slow": Rule(Mode.TRICKLE_HEADERS, interval=0.2)}, tls=certificate) as web:
        assert web.url.startswith("https://")
        _tls_context.cache_clear()
        with pytest.raises(DownloadError, match=r"small: certificate verify failed"):
            fetch(web.url + "small", tmp_path / "a", size=1000)
        monkeypatch.setenv("SSL_CERT_FILE", os.fspath(certificate[0]))
        _tls_context.cache_clear()
        fetch(web.url + "small", tmp_path / "b", size=1000)
        assert (tmp_path / "b").read_bytes() == b"x" * 1000
        started = time.monotonic()
        with pytest.raises(DownloadError, match=r"slow: gave up after [3-7]\.\d s"):
            fetch(web.url + "slow", tmp_path / "c", size=1000)
        assert time.monotonic() - started < 8  # the 3 s deadline, with slack for a loaded machine
    # A certificate that does not verify is final: one request, no retries.
    assert [r.path for r in web.requests] == ["/small", "/slow"]
