"""Transports: where manifests and packages come from."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from deploy.sources.base import FetchJob, FetchStats, Source
from imagespec.errors import ManifestError

__all__ = ["FetchJob", "FetchStats", "Source", "open_source"]


def open_source(spec: str) -> Source:
    """The transport for a manifest path, directory, or file://, http(s):// or rsync:// URL."""
    scheme = urllib.parse.urlsplit(spec).scheme
    if scheme in ("http", "https"):
        from deploy.sources.http import HttpSource

        return HttpSource(spec)
    if scheme == "rsync":
        from deploy.sources.rsync import RsyncSource

        return RsyncSource(spec)
    from deploy.sources.local import LocalSource

    if scheme == "file":
        return LocalSource(Path(urllib.parse.unquote(urllib.parse.urlsplit(spec).path)))
    if scheme and len(scheme) > 1:
        raise ManifestError(f"{spec}: unsupported URL scheme {scheme!r} (use a path, file://, http(s)://, rsync://)")
    return LocalSource(Path(spec))
