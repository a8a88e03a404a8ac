"""Fetch the channel's latest manifest (and rollout file) from the first mirror that answers.

Over HTTP the manifest is asked for conditionally (If-None-Match / If-Modified-Since with
what the last check remembered), so an unchanged channel costs one request answered 304;
its signature is fetched only when the manifest changed. The rollout file is asked for
(conditionally too) only when the caller needs it: when this machine has not taken the
latest version yet. A file:// channel is read in place.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from deploy.sources.base import MANIFEST_LIMIT, SIGNATURE_LIMIT, download_limits
from host.files import ReadRefused, read_limited
from host.http import DownloadError, Limits, Validators, download_bytes, download_if_changed
from imagespec.errors import ManifestError
from imagespec.published import IMAGES, LATEST, MANIFEST, SIGNATURE
from imagespec.rollout import LIMIT as ROLLOUT_LIMIT
from imagespec.rollout import ROLLOUT, ROLLOUT_SIGNATURE


@dataclass(frozen=True)
class Remembered:
    """One file as the last check fetched it: its bytes, signature and validators."""

    url: str
    data: bytes
    signature: bytes | None
    validators: Validators = field(default_factory=Validators)


@dataclass(frozen=True)
class Fetched:
    """A file fetched now, or the remembered one when the server said it is unchanged."""

    file: Remembered | None  # None: the server has no such file (404)
    not_modified: bool = False
    requests: int = 0


def latest_url(base: str, image: str) -> str:
    return urllib.parse.urljoin(base, f"{IMAGES}/{image}/{LATEST}/{MANIFEST}")


def version_url(base: str, image: str, version: str) -> str:
    return urllib.parse.urljoin(base, f"{IMAGES}/{image}/{version}/{MANIFEST}")


def rollout_url(base: str, image: str) -> str:
    return urllib.parse.urljoin(base, f"{IMAGES}/{image}/{ROLLOUT}")


def _local(url: str, limit: int, sig_name: str, sig_limit: int) -> Fetched:
    path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    try:
        data = read_limited(path, limit)
    except FileNotFoundError:
        return Fetched(None)
    except (OSError, ReadRefused) as e:
        raise ManifestError(f"{url}: {getattr(e, 'strerror', None) or e}") from None
    try:
        signature: bytes | None = read_limited(path.with_name(sig_name), sig_limit)
    except FileNotFoundError:
        signature = None
    except (OSError, ReadRefused) as e:
        raise ManifestError(f"{url}: signature: {getattr(e, 'strerror', None) or e}") from None
    return Fetched(Remembered(url, data, signature))


def fetch_signed(url: str, limit: int, sig_name: str, remembered: Remembered | None,
                 limits: Limits | None = None) -> Fetched:
    """The file at url with its detached signature (None when the server has none).

    With `remembered` for the same URL, a 304 answer returns it unchanged: one request.
    A 404 for the file gives Fetched(None); any other failure raises ManifestError.
    """
    if urllib.parse.urlsplit(url).scheme == "file":
        return _local(url, limit, sig_name, SIGNATURE_LIMIT)
    limits = download_limits(limits)
    have = remembered.validators if remembered is not None and remembered.url == url else None
    try:
        got = download_if_changed(url, limit, have, limits=limits)
    except DownloadError as e:
        if e.status == 404:
            return Fetched(None, requests=1)
        raise ManifestError(str(e)) from e
    if got is None:
        assert remembered is not None
        return Fetched(remembered, not_modified=True, requests=1)
    data, validators = got
    sig_url = urllib.parse.urljoin(url, sig_name)
    try:
        signature: bytes | None = download_bytes(sig_url, SIGNATURE_LIMIT, limits=limits)
    except DownloadError as e:
        if e.status != 404:
            raise ManifestError(str(e)) from e
        signature = None
    return Fetched(Remembered(url, data, signature, validators), requests=2)


def fetch_latest(base: str, image: str, remembered: Remembered | None,
                 limits: Limits | None = None) -> Fetched:
    fetched = fetch_signed(latest_url(base, image), MANIFEST_LIMIT, SIGNATURE, remembered, limits)
    if fetched.file is None:
        raise ManifestError(f"{latest_url(base, image)}: not found (is {image!r} published there?)")
    return fetched


def fetch_rollout(base: str, image: str, remembered: Remembered | None,
                  limits: Limits | None = None) -> Fetched:
    return fetch_signed(rollout_url(base, image), ROLLOUT_LIMIT, ROLLOUT_SIGNATURE, remembered,
                        limits)
