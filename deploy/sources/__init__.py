"""Transports: where manifests and packages come from."""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from deploy.sources.base import FetchJob, FetchStats, Source
from imagespec.errors import ManifestError

__all__ = ["FetchJob", "FetchStats", "Source", "open_source"]


def open_source(spec: str, mirrors: Sequence[str] = ()) -> Source:
    """The transport for a manifest path, directory, or file://, http(s):// or rsync:// URL;
    mirrors, other http(s) URLs of the same manifest, only with an http(s) one."""
    scheme = urllib.parse.urlsplit(spec).scheme
    if mirrors and (scheme not in ("http", "https") or any(
            urllib.parse.urlsplit(m).scheme not in ("http", "https") for m in mirrors)):
        raise ManifestError(f"{spec}: mirrors are for http(s) sources, each an http(s) URL")
    if scheme in ("http", "https"):
        from deploy.sources.http import HttpSource

        return HttpSource(spec, mirrors=mirrors)
    if scheme == "rsync":
        from deploy.sources.rsync import RsyncSource

        return RsyncSource(spec)
    from deploy.sources.local import LocalSource

    if scheme == "file":
        return LocalSource(Path(urllib.parse.unquote(urllib.parse.urlsplit(spec).path)))
    if scheme and len(scheme) > 1:
        raise ManifestError(f"{spec}: unsupported URL scheme {scheme!r} (use a path, file://, http(s)://, rsync://)")
    return LocalSource(Path(spec))
