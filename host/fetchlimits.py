"""What bounds a download and how one fails: the limits every fetch obeys (each settable in
the environment) and its error, apart from the wire in host.httpconn so that code that only
passes them on (a local deploy, verify) never loads http.client, ssl or urllib.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_PREFIX = "RPMIMG_FETCH_"


class DownloadError(Exception):
    """A download that failed or was refused; str() is one line naming the URL."""

    def __init__(self, message: str, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status  # the final HTTP status, when the server gave one


@dataclass(frozen=True)
class Limits:
    """How long a download may take; each field can be set as RPMIMG_FETCH_<FIELD>."""

    connect_timeout: float = 15.0  # s, to establish TCP (and TLS)
    idle_timeout: float = 30.0  # s without a byte
    deadline_base: float = 60.0  # s, plus size / min_rate: the whole download's deadline
    min_rate: float = 16384.0  # bytes/s, the slowest link a download is allowed
    max_redirects: int = 5
    attempts: int = 4
    backoff: float = 0.5  # s before the second attempt, doubling, at most 8 s

    def deadline(self, size: int) -> float:
        """Seconds allowed for a download of at most `size` bytes, retries included."""
        return self.deadline_base + size / self.min_rate

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """The defaults, overridden by RPMIMG_FETCH_CONNECT_TIMEOUT, ..._IDLE_TIMEOUT,
        ..._DEADLINE_BASE, ..._MIN_RATE, ..._MAX_REDIRECTS, ..._ATTEMPTS, ..._BACKOFF."""
        env = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for f in dataclasses.fields(cls):
            name = ENV_PREFIX + f.name.upper()
            text = env.get(name, "").strip()
            if not text:
                continue
            kind = int if f.type in ("int", int) else float
            try:
                value = kind(text)
            except ValueError:
                raise DownloadError(f"{name}={text!r}: not {'an integer' if kind is int else 'a number'}") from None
            positive = f.name in ("connect_timeout", "idle_timeout", "min_rate", "attempts")
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise DownloadError(f"{name}={text!r}: must be a finite number "
                                    f"{'above' if positive else 'of at least'} 0")
            values[f.name] = value
        return cls(**values)  # type: ignore[arg-type]
