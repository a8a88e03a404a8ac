"""Fetching over real HTTP on 127.0.0.1: checksums, resume after a cut, retries, file://, and
the bounds on what a repository's server may send."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import hostile_httpd
import pytest
from hostile_httpd import Mode, Rule

from fixtures.httpd import Faults, serve
from host.http import Limits
from solver.errors import ComposeFetchError
from solver.fetch import DEFAULT_LIMIT, Checksum, Fetcher, FetchItem

PAYLOAD = os.urandom(300_000)


def sha(data: bytes) -> Checksum:
    return Checksum("sha256", hashlib.sha256(data).hexdigest())


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "pkgs").mkdir(parents=True)
    (root / "pkgs" / "a.rpm").write_bytes(PAYLOAD)
    (root / "pkgs" / "b.rpm").write_bytes(PAYLOAD[::-1])
    return root


def fetcher() -> Fetcher:
    return Fetcher(backoff=0.01, timeout=5)


def test_download_checked(tmp_path: Path, site: Path) -> None:
    with serve(site) as web:
        seen: list[int] = []
        dest = tmp_path / "out" / "a.rpm"
        got = fetcher().fetch(FetchItem(web.url + "pkgs/a.rpm", dest, sha(PAYLOAD), "a-1.0"),
                              seen.append)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert sum(seen) == len(PAYLOAD)
    assert not dest.with_name("a.rpm.part").exists()


def test_checksum_mismatch_names_the_package(tmp_path: Path, site: Path) -> None:
    dest = tmp_path / "a.rpm"
    with serve(site) as web, pytest.raises(ComposeFetchError) as e:
        fetcher().fetch(FetchItem(web.url + "pkgs/a.rpm", dest, sha(b"other"), "a-1.0-1.x86_64"))
    assert str(e.value).startswith("a-1.0-1.x86_64: checksum mismatch")
    assert not dest.exists() and not dest.with_name("a.rpm.part").exists()


def test_cut_download_resumes_with_range(tmp_path: Path, site: Path) -> None:
    faults = Faults(drop_after={"/pkgs/a.rpm": 100_000})
    dest = tmp_path / "a.rpm"
    with serve(site, faults) as web:
        fetcher().fetch(FetchItem(web.url + "pkgs/a.rpm", dest, sha(PAYLOAD), "a"))
    assert dest.read_bytes() == PAYLOAD
    ranges = [r for p, r in web.requests if p == "/pkgs/a.rpm"]
    assert ranges[0] is None
    assert len(ranges) == 2 and ranges[1] is not None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert resumed_at == 100_000  # nothing that arrived before the cut is fetched again


def test_partial_file_from_an_earlier_run_resumes(tmp_path: Path, site: Path) -> None:
    dest = tmp_path / "a.rpm"
    dest.with_name("a.rpm.part").write_bytes(PAYLOAD[:123_456])
    with serve(site) as web:
        fetcher().fetch(FetchItem(web.url + "pkgs/a.rpm", dest, sha(PAYLOAD), "a"))
    assert dest.read_bytes() == PAYLOAD
    assert web.requests == [("/pkgs/a.rpm", "bytes=123456-")]


def test_server_ignoring_range_still_gives_the_right_file(tmp_path: Path, site: Path) -> None:
    faults = Faults(drop_after={"/pkgs/a.rpm": 50_000}, honour_range=False)
    dest = tmp_path / "a.rpm"
    with serve(site, faults) as web:
        fetcher().fetch(FetchItem(web.url + "pkgs/a.rpm", dest, sha(PAYLOAD), "a"))
    assert dest.read_bytes() == PAYLOAD


def test_stale_partial_file_is_restarted(tmp_path: Path, site: Path) -> None:
    # A .part that is no prefix of the file: the spliced result fails, one clean retry fixes it.
    dest = tmp_path / "a.rpm"
    dest.with_name("a.rpm.part").write_bytes(b"x" * 1000)
    with serve(site) as web:
        fetcher().fetch(FetchItem(web.url + "pkgs/a.rpm", dest, sha(PAYLOAD), "a"))
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in web.requests] == ["bytes=1000-", None]


def test_transient_errors_are_retried(tmp_path: Path, site: Path) -> None:
    faults = Faults(status={"/pkgs/a.rpm": [503, 502]})
    with serve(site, faults) as web:
        fetcher().fetch(FetchItem(web.url + "pkgs/a.rpm", tmp_path / "a", sha(PAYLOAD), "a"))
    assert len(web.requests) == 3


def test_not_found_is_final(tmp_path: Path, site: Path) -> None:
    with serve(site) as web, pytest.raises(ComposeFetchError, match=r"^gone-1: .*HTTP 404"):
        fetcher().fetch(FetchItem(web.url + "pkgs/gone.rpm", tmp_path / "g", None, "gone-1"))
    assert len(web.requests) == 1


def test_persistent_failure_gives_up(tmp_path: Path, site: Path) -> None:
    faults = Faults(status={"/pkgs/a.rpm": [503] * 10})
    with serve(site, faults) as web, pytest.raises(ComposeFetchError, match="failed after 4 attempts"):
        fetcher().fetch(FetchItem(web.url + "pkgs/a.rpm", tmp_path / "a", None, "a"))


def test_refused_connection_gives_up(tmp_path: Path, site: Path) -> None:
    with serve(site) as web:
        url = web.url  # nobody listens on this port once the server has closed
    with pytest.raises(ComposeFetchError, match=r"^a: http://127\.0\.0\.1:\d+/pkgs/a\.rpm: failed after 4 attempts: Connection refused$"):
        fetcher().fetch(FetchItem(url + "pkgs/a.rpm", tmp_path / "a", None, "a"))


def test_fetch_all_in_parallel(tmp_path: Path, site: Path) -> None:
    with serve(site) as web:
        items = [FetchItem(web.url + "pkgs/a.rpm", tmp_path / "a", sha(PAYLOAD), "a"),
                 FetchItem(web.url + "pkgs/b.rpm", tmp_path / "b", sha(PAYLOAD[::-1]), "b")]
        paths = fetcher().fetch_all(items)
        assert [p.read_bytes() for p in paths] == [PAYLOAD, PAYLOAD[::-1]]
        bad = [items[0], FetchItem(web.url + "pkgs/b.rpm", tmp_path / "b2", sha(b""), "b-bad")]
        with pytest.raises(ComposeFetchError, match="b-bad"):
            fetcher().fetch_all(bad)


def test_file_url_is_used_in_place(tmp_path: Path, site: Path) -> None:
    source = site / "pkgs" / "a.rpm"
    dest = tmp_path / "never-written"
    got = fetcher().fetch(FetchItem(source.as_uri(), dest, sha(PAYLOAD), "a"))
    assert got == source and not dest.exists()
    with pytest.raises(ComposeFetchError, match="checksum mismatch"):
        fetcher().fetch(FetchItem(source.as_uri(), dest, sha(b"x"), "a"))
    with pytest.raises(ComposeFetchError, match="does not exist"):
        fetcher().fetch(FetchItem((site / "nope").as_uri(), dest, None, "nope"))


def test_verified_file_from_earlier_run_is_not_fetched_again(tmp_path: Path, site: Path) -> None:
    dest = tmp_path / "a.rpm"
    dest.write_bytes(PAYLOAD)
    with serve(site) as web:
        fetcher().fetch(FetchItem(web.url + "pkgs/a.rpm", dest, sha(PAYLOAD), "a"))
    assert web.requests == []


def test_listed_size_caps_the_download(tmp_path: Path, site: Path) -> None:
    dest = tmp_path / "a.rpm"
    rule = Rule(Mode.ENDLESS, size=3 << 30)
    with hostile_httpd.serve(site, {"/pkgs/a.rpm": rule}) as web, pytest.raises(ComposeFetchError) as e:
        fetcher().fetch(FetchItem(web.url + "pkgs/a.rpm", dest, sha(PAYLOAD), "a-1.0-1.x86_64",
                                  len(PAYLOAD)))
    assert str(e.value) == (f"a-1.0-1.x86_64: {web.url}pkgs/a.rpm: the server sent more than the "
                            f"{len(PAYLOAD)} bytes expected")
    assert not dest.exists() and not dest.with_name("a.rpm.part").exists()


def test_unlisted_size_gets_a_fixed_cap(tmp_path: Path, site: Path) -> None:
    # repomd.xml, keys, and a package listed with size 0 (None): DEFAULT_LIMIT unless told.
    rule = Rule(Mode.HUGE, size=1 << 30)
    with hostile_httpd.serve(site, {"/repomd.xml": rule}) as web:
        with pytest.raises(ComposeFetchError, match=rf"repomd.xml: Content-Length 1073741824 from byte 0 is more than the {DEFAULT_LIMIT}-byte maximum"):
            fetcher().fetch(FetchItem(web.url + "repodata/repomd.xml", tmp_path / "r", None, "repo"))
        with pytest.raises(ComposeFetchError, match="more than the 1000-byte maximum"):
            fetcher().fetch(FetchItem(web.url + "pkgs/a.rpm", tmp_path / "a", None, "a", limit=1000))
    assert not (tmp_path / "r.part").exists()


def test_trickling_mirror_is_given_up_at_the_deadline(tmp_path: Path, site: Path) -> None:
    limits = Limits(deadline_base=2, min_rate=1e12, idle_timeout=5)
    started = time.monotonic()
    with hostile_httpd.serve(site, {"/pkgs/a.rpm": Rule(Mode.TRICKLE, interval=0.1)}) as web, \
            pytest.raises(ComposeFetchError, match=r"^a: .*a\.rpm: gave up after 2\.\d s, past the deadline"):
        Fetcher(limits=limits).fetch(FetchItem(web.url + "pkgs/a.rpm", tmp_path / "a",
                                               sha(PAYLOAD), "a", len(PAYLOAD)))
    assert time.monotonic() - started < 3


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPMIMG_FETCH_IDLE_TIMEOUT", "7")
    assert Fetcher().limits.idle_timeout == 7
    assert Fetcher(timeout=3, attempts=2).limits == Limits(idle_timeout=3, attempts=2)
    monkeypatch.setenv("RPMIMG_FETCH_IDLE_TIMEOUT", "soon")
    with pytest.raises(ComposeFetchError, match="RPMIMG_FETCH_IDLE_TIMEOUT='soon': not a number"):
        Fetcher()
