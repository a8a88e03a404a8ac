"""The published mirror list is parsed strictly, and the fetch bar counts files."""

from __future__ import annotations

import io

from deploy.sources.mirrorlist import MAX_MIRRORS, parse_mirrors
from rpmimg.ui import Progress


def test_only_http_urls_become_mirrors_and_never_a_downgrade_from_https() -> None:
    text = "\n".join(["# comment", "", "  http://a.example/out  ", "ftp://b.example/",
                      "file:///etc/", "https://c.example/out/", "not a url", "http://"])
    assert parse_mirrors(text, "http://primary/images/x/1/manifest.json") == [
        "http://a.example/out/images/_/_/manifest.json",
        "https://c.example/out/images/_/_/manifest.json",
    ]
    assert parse_mirrors(text, "https://primary/images/x/1/manifest.json") == [
        "https://c.example/out/images/_/_/manifest.json",
    ]
    many = "\n".join(f"http://m{i}.example/" for i in range(100))
    assert len(parse_mirrors(many, "http://p/m.json")) == MAX_MIRRORS


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_fetch_bar_shows_bytes_and_files() -> None:
    out = _Tty()
    bar = Progress("fetch", stream=out)
    bar.files(2, 5)
    bar(1 << 20, 4 << 20)
    assert "1.0 MiB/4.0 MiB 2/5 files" in out.getvalue()
