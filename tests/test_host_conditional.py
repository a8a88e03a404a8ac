"""host.http's conditional GET: a 304 costs one request and no body; a hostile server gets
nothing more out of a conditional request than out of any other."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hostile_httpd import Mode, Rule, serve
from servers import Faults, http_server

from host.http import DownloadError, Limits, TooLarge, Validators, download_if_changed

FAST = Limits(connect_timeout=2, idle_timeout=2, deadline_base=3, min_rate=1e12, attempts=2,
              backoff=0.01)


def test_unchanged_file_is_one_request_answered_304(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"one")
    faults = Faults()
    with http_server(tmp_path, faults) as base:
        got = download_if_changed(base + "/f", 100, None, limits=FAST)
        assert got is not None and got[0] == b"one"
        validators = got[1]
        assert validators.etag and validators.last_modified
        faults.answers.clear()
        assert download_if_changed(base + "/f", 100, validators, limits=FAST) is None
        assert faults.answers == [("/f", 304)]
        # Last-Modified alone is enough for a server that sends no ETag.
        assert download_if_changed(base + "/f", 100, Validators(None, validators.last_modified),
                                   limits=FAST) is None
        (tmp_path / "f").write_bytes(b"two, longer")
        os.utime(tmp_path / "f", (1, 1))
        again = download_if_changed(base + "/f", 100, validators, limits=FAST)
        assert again is not None and again[0] == b"two, longer" and again[1] != validators


def test_hostile_answers_to_conditional_requests(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    have = Validators('"abc"', None)
    rules = {"/unasked": Rule(Mode.FAIL, statuses=[304] * 10), "/endless": Rule(Mode.ENDLESS, size=1 << 20)}
    with serve(tmp_path, rules) as web:
        # A 304 nobody asked for is no answer: nothing remembered to fall back on.
        with pytest.raises(DownloadError, match="HTTP 304"):
            download_if_changed(web.url + "unasked", 100, None, limits=FAST)
        # A changed file is still bounded by the limit.
        with pytest.raises(TooLarge):
            download_if_changed(web.url + "endless", 4096, have, limits=FAST)
        got = download_if_changed(web.url + "f", 100, have, limits=FAST)
        assert got is not None and got[0] == b"x" * 100
    with pytest.raises(TooLarge):
        with serve(tmp_path, {}) as web:
            download_if_changed(web.url + "f", 99, have, limits=FAST)
