"""One bounded HTTP(S) download, for the client and the server alike.

Servers choose lengths, encodings, redirects and speed; this module chooses how much it
reads and for how long:

- Size: every download has a cap, the exact size the caller expects (from a signed
  manifest or repository metadata) or a fixed maximum when no size is known. Reading
  stops and fails at cap + 1 byte; a Content-Length above the cap is refused before the
  body. Nothing beyond the cap is ever written.
- Encoding: `Accept-Encoding: identity` is asked and Content-Encoding is never decoded:
  the bytes on the wire are the bytes stored, so a gzip "bomb" stays its compressed size.
- Time: a connect timeout, an idle timeout on every wait for data, and an overall
  deadline for the whole download (attempts and backoff included) of
  `deadline_base + cap / min_rate` seconds. Every socket wait is bounded by what is left
  of the deadline, so it holds against a server that trickles its headers too.
- Redirects: at most `max_redirects`, to http(s) only, never from https down to http;
  an error names the URL asked for and where it was redirected.
- Resume: a cut download resumes with `Range`; the `Content-Range` must start where the
  partial data ends; a server that ignores Range restarts the file from its first byte.
- Retries: connection errors, cuts and RETRY_STATUS answers, with doubling backoff.

The wire (bounded sockets, proxies from http_proxy, https_proxy and no_proxy, redirects)
is host.httpconn.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from host.fetchlimits import DownloadError, Limits
from host.httpconn import Clock, Restart, Retry, exchange
from host.log import get as logger

__all__ = ["RETRY_STATUS", "DownloadError", "Limits", "NoRanges", "TooLarge", "Validators",
           "download", "download_bytes", "download_file", "download_if_changed", "download_range"]

log = logger(__name__)

CHUNK = 1 << 16
# Answers worth another attempt: the server or a proxy had a moment. Any other is final.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

T = TypeVar("T")
Progress = Callable[[int], None]  # bytes added to (or, on a restart, taken from) the file


class TooLarge(DownloadError):
    """The server sent, or announced, more bytes than the download's cap."""


class NoRanges(DownloadError):
    """The server answered a range request with the whole file (it ignores Range)."""


@dataclass(frozen=True)
class Validators:
    """What a server said identifies a file's version: its ETag and Last-Modified, verbatim."""

    etag: str | None = None
    last_modified: str | None = None


class _NotModified(Exception):
    """The server answered 304 to a conditional request."""


@dataclass
class _Want:
    """One download asked for: where from, its size if known, its cap, its progress."""

    url: str
    size: int | None  # the exact size expected, when known
    cap: int  # never more bytes than this
    progress: Progress
    condition: Validators | None = None  # ask If-None-Match / If-Modified-Since with these
    seen: list[Validators] = field(default_factory=list)  # the validators of the answer

    def too_large(self, final: str, detail: str) -> TooLarge:
        what = (f"the {self.cap} bytes expected" if self.size is not None
                else f"the {self.cap}-byte maximum for a file of unknown size")
        return TooLarge(f"{self.url}{_via(self.url, final)}: {detail} more than {what}", self.url)


def _via(url: str, final: str) -> str:
    return f" (redirected to {final})" if final != url else ""


def _resume_offset(response: http.client.HTTPResponse, have: int) -> int:
    """Where the body goes in the file: 0 for a whole file, `have` for a valid partial one."""
    if response.status == 200:
        return 0
    value = (response.getheader("Content-Range") or "").strip()
    m = _CONTENT_RANGE.fullmatch(value)
    if m is None or int(m[1]) != have or int(m[2]) < have:
        raise Restart(f"asked for bytes {have}-, got HTTP 206 with Content-Range {value!r}")
    if response.length is not None and response.length != int(m[2]) - have + 1:
        raise Restart(f"Content-Range {value!r} disagrees with Content-Length {response.length}")
    return have


def _truncate(sink: BinaryIO, want: _Want, at: int) -> None:
    have = sink.seek(0, io.SEEK_END)
    if have > at:
        sink.truncate(at)
        want.progress(at - have)


def _body(response: http.client.HTTPResponse, sink: BinaryIO, want: _Want, start: int,
          final: str) -> int:
    """Write the body at `start`, never past the cap; returns the file's new length."""
    if response.length is not None and start + response.length > want.cap:
        raise want.too_large(final, f"Content-Length {response.length} from byte {start} is")
    _truncate(sink, want, start)
    pos = sink.seek(start)
    while chunk := response.read1(min(CHUNK, want.cap - pos + 1)):
        if pos + len(chunk) > want.cap:
            raise want.too_large(final, "the server sent")
        sink.write(chunk)
        pos += len(chunk)
        want.progress(len(chunk))
    if response.length:  # http.client counts it down; what is left never arrived
        raise Retry(f"connection closed after {pos} bytes, {response.length} short")
    return pos


def _attempt(sink: BinaryIO, want: _Want, clock: Clock) -> str:
    """One request: resume or restart, read the body; returns the final URL."""
    have = sink.seek(0, io.SEEK_END)
    if want.size is not None and have == want.size:
        return want.url
    headers = {"User-Agent": "rpmimg", "Accept-Encoding": "identity", "Connection": "close"}
    if have:
        headers["Range"] = f"bytes={have}-"
    elif want.condition is not None:
        headers.update(_conditional_headers(want.condition))
    conn, response, final = exchange(want.url, headers, clock)
    try:
        status = response.status
        if status == 304 and want.condition is not None and not have:
            raise _NotModified()
        want.seen[:] = [Validators(_header(response, "ETag"), _header(response, "Last-Modified"))]
        if status == 416 and have:
            _truncate(sink, want, 0)  # what we have is no prefix of the server's file
            raise Retry("range not satisfiable, restarting")
        if status in RETRY_STATUS:
            raise Retry(f"HTTP {status} {response.reason}")
        if status not in (200, 206):
            raise DownloadError(f"{want.url}{_via(want.url, final)}: HTTP {status} {response.reason}",
                                want.url, status)
        if response.length is not None:
            clock.tighten(clock.limits.deadline(response.length + have))
        end = _body(response, sink, want, _resume_offset(response, have), final)
    finally:
        response.close()
        conn.close()
    if want.size is not None and end < want.size:
        raise Retry(f"connection closed after {end} of {want.size} bytes")
    return final


def _conditional_headers(condition: Validators) -> dict[str, str]:
    headers = {}
    if condition.etag:
        headers["If-None-Match"] = condition.etag
    if condition.last_modified:
        headers["If-Modified-Since"] = condition.last_modified
    return headers


def _header(response: http.client.HTTPResponse, name: str) -> str | None:
    """A validator header, kept only when short and printable (it is sent back verbatim)."""
    value = (response.getheader(name) or "").strip()
    if not value or len(value) > 256 or not value.isprintable():
        return None
    return value


def _describe(e: BaseException, limits: Limits) -> str:
    if isinstance(e, TimeoutError):
        return f"no data for {limits.idle_timeout:g} s"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host: {e.strerror}"
    if isinstance(e, http.client.IncompleteRead):
        return "connection closed in the middle of the body"
    if isinstance(e, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def download(url: str, sink: BinaryIO, *, size: int | None = None, limit: int | None = None,
             limits: Limits | None = None, progress: Progress | None = None) -> str:
    """Bring sink, resuming from its current length, to the whole file at url; return the
    final URL. With `size` the file must be exactly that long, else at most `limit` bytes."""
    cap = size if size is not None else limit
    if cap is None or cap < 0:
        raise ValueError("download needs a size or a limit")
    return _download(_Want(url, size, cap, progress or (lambda n: None)), sink, limits or Limits())


def _download(want: _Want, sink: BinaryIO, limits: Limits) -> str:
    url, cap = want.url, want.cap
    clock = Clock(limits.deadline(cap), limits)
    if sink.seek(0, io.SEEK_END) > cap:
        sink.truncate(0)
    want.progress(sink.seek(0, io.SEEK_END))
    return _retrying(
        url, "", clock, lambda: _attempt(sink, want, clock),
        restart=lambda: _truncate(sink, want, 0),
        late=lambda: f", past the deadline for {cap} bytes ({sink.seek(0, io.SEEK_END)} received)")


def _retrying(url: str, what: str, clock: Clock, attempt: Callable[[], T],
              restart: Callable[[], None] = lambda: None, late: Callable[[], str] = str) -> T:
    """attempt() until it returns: Retry, connection errors and cuts are tried again after
    a doubling backoff, at most clock.limits.attempts times and within the clock's deadline;
    a Restart first calls restart() (the partial data is no prefix). Errors name url and
    what (", bytes A-B" for a range); late() adds to the message of a deadline passed."""
    limits = clock.limits
    last = ""
    for n in range(limits.attempts):
        if n:
            clock.sleep(min(limits.backoff * 2 ** (n - 1), 8.0))
        try:
            if clock.left() <= 0:
                raise TimeoutError("deadline passed")
            return attempt()
        except Restart as e:
            restart()
            last = str(e)
        except Retry as e:
            last = str(e)
        except (OSError, http.client.HTTPException) as e:
            if clock.left() <= 0:
                raise DownloadError(f"{url}{what}: gave up after {time.monotonic() - clock.start:.1f} s"
                                    f"{late()}", url) from e
            if isinstance(e, ssl.SSLCertVerificationError):
                raise DownloadError(f"{url}: certificate verify failed: {e.verify_message}", url) from e
            last = _describe(e, limits)
        log.debug("%s%s: attempt %d: %s", url, what, n + 1, last)
    raise DownloadError(f"{url}{what}: failed after {limits.attempts} attempts: {last}", url)


def download_file(url: str, part: Path, *, size: int | None = None, limit: int | None = None,
                  limits: Limits | None = None, progress: Progress | None = None) -> str:
    """download() into the file `part`, resuming what it holds; return the final URL.

    The file never grows past the cap; refused as too large, it is removed (its bytes came
    from a server that lies about the file). Whatever else happens it is synced, so that
    a later run resumes from it.
    """
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with open(fd, "r+b") as sink:
        try:
            return download(url, sink, size=size, limit=limit, limits=limits, progress=progress)
        except TooLarge:
            part.unlink(missing_ok=True)
            raise
        finally:
            sink.flush()
            os.fsync(sink.fileno())


def download_bytes(url: str, limit: int, *, limits: Limits | None = None) -> bytes:
    """The whole file at url, at most `limit` bytes, in memory."""
    sink = io.BytesIO()
    download(url, sink, limit=limit, limits=limits)
    return sink.getvalue()


def _range_attempt(url: str, start: int, length: int, clock: Clock, progress: Progress) -> bytes:
    end = start + length - 1
    headers = {"User-Agent": "rpmimg", "Accept-Encoding": "identity", "Connection": "close",
               "Range": f"bytes={start}-{end}"}
    conn, response, final = exchange(url, headers, clock)
    try:
        status = response.status
        if status in RETRY_STATUS:
            raise Retry(f"HTTP {status} {response.reason}")
        if status == 200:
            raise NoRanges(f"{url}{_via(url, final)}: the server ignores Range requests", url, 200)
        if status != 206:
            raise DownloadError(f"{url}{_via(url, final)}: HTTP {status} {response.reason}", url, status)
        value = (response.getheader("Content-Range") or "").strip()
        m = _CONTENT_RANGE.fullmatch(value)
        if m is None or (int(m[1]), int(m[2])) != (start, end) or (
                response.length is not None and response.length != length):
            raise DownloadError(f"{url}{_via(url, final)}: asked for bytes {start}-{end}, got "
                                f"Content-Range {value!r}, Content-Length {response.length}", url, 206)
        body = bytearray()
        while chunk := response.read1(min(CHUNK, length - len(body) + 1)):
            body += chunk
            if len(body) > length:
                raise TooLarge(f"{url}{_via(url, final)}: the server sent more than the "
                               f"{length} bytes of range {start}-{end}", url)
            progress(len(chunk))
        if len(body) < length:
            progress(-len(body))
            raise Retry(f"connection closed after {len(body)} of {length} bytes")
        return bytes(body)
    finally:
        response.close()
        conn.close()


def download_range(url: str, start: int, length: int, *, limits: Limits | None = None,
                   progress: Progress | None = None) -> bytes:
    """Bytes [start, start + length) of the file at url, exactly: a 206 answer whose
    Content-Range is the range asked and whose body is its length, never a byte more.
    A server that answers with the whole file raises NoRanges (its body is not read)."""
    limits = limits or Limits()
    if start < 0 or length <= 0:
        raise ValueError("download_range needs a start >= 0 and a length > 0")
    clock = Clock(limits.deadline(length), limits)
    return _retrying(url, f": bytes {start}-{start + length - 1}", clock,
                     lambda: _range_attempt(url, start, length, clock, progress or (lambda n: None)))


def download_if_changed(url: str, limit: int, have: Validators | None, *,
                        limits: Limits | None = None) -> tuple[bytes, Validators] | None:
    """The whole file at url (at most `limit` bytes) and its validators, or None when the
    server answers 304: the file is still the one `have` identifies (a conditional GET)."""
    sink = io.BytesIO()
    want = _Want(url, None, limit, lambda n: None, condition=have)
    try:
        _download(want, sink, limits or Limits())
    except _NotModified:
        return None
    return sink.getvalue(), want.seen[0] if want.seen else Validators()
