"""The mirror list a publisher puts beside an image's versions: `images/NAME/mirrors.txt`.

One URL a line, each the base URL of a full copy of the output directory (the one that
holds `pool/` and `images/`); blank lines and lines starting with # are skipped. The list
is not signed and needs not be: a mirror is never trusted, every byte it serves is
checked against the signed manifest. Lines that are not http(s) URLs, and http URLs when
the manifest came over https, are ignored with a warning. A missing list is no mirrors;
a list that can't be fetched is logged and ignored.
"""

from __future__ import annotations

import urllib.parse

from host.http import DownloadError, Limits, download_bytes
from host.log import get as logger
from imagespec.published import MANIFEST

log = logger(__name__)

MIRRORS = "mirrors.txt"
MIRRORS_LIMIT = 64 << 10
MAX_MIRRORS = 16
# Package locations are relative to images/NAME/VERSION/manifest.json; any such path under
# a mirror's base resolves them to the mirror's pool.
_AS_MANIFEST = f"images/_/_/{MANIFEST}"


def parse_mirrors(text: str, manifest_url: str) -> list[str]:
    """The manifest-equivalent URL on each mirror a mirror list names."""
    secure = manifest_url.startswith("https:")
    out: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = urllib.parse.urlsplit(line)
        if parts.scheme not in ("http", "https") or not parts.netloc or (secure and parts.scheme == "http"):
            log.warning("%s line %d: %r is not an %s URL; ignored", MIRRORS, number, line[:80],
                        "https" if secure else "http(s)")
            continue
        base = line if line.endswith("/") else line + "/"
        if len(out) < MAX_MIRRORS:
            out.append(urllib.parse.urljoin(base, _AS_MANIFEST))
    return out


def published_mirrors(manifest_url: str, limits: Limits) -> list[str]:
    """Fetch and parse the mirror list beside the manifest's version directory."""
    url = urllib.parse.urljoin(manifest_url, f"../{MIRRORS}")
    try:
        data = download_bytes(url, MIRRORS_LIMIT, limits=limits)
    except DownloadError as e:
        if e.status != 404:
            log.warning("%s: %s; going on without it", url, e)
        return []
    return parse_mirrors(data.decode("utf-8", errors="replace"), manifest_url)
