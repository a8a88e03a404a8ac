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

Built on http.client over sockets this module creates, so that each wait can be bounded;
proxies come from http_proxy, https_proxy and no_proxy as urllib reads them.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import http.client
import io
import logging
import os
import re
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import SplitResult, unquote, urljoin, urlsplit, urlunsplit

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

CHUNK = 1 << 16
# Answers worth another attempt: the server or a proxy had a moment. Any other is final.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
ENV_PREFIX = "RPMIMG_HTTP_"

Progress = Callable[[int], None]  # bytes added to (or, on a restart, taken from) the file


class DownloadError(Exception):
    """A download that failed or was refused; str() is one line naming the URL."""

    def __init__(self, message: str, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status  # the final HTTP status, when the server gave one


@dataclass(frozen=True)
class Limits:
    """How long a download may take; each field can be set as RPMIMG_HTTP_<FIELD>."""

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
        """The defaults, overridden by RPMIMG_HTTP_CONNECT_TIMEOUT, ..._IDLE_TIMEOUT,
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
            floor = 1 if f.name in ("attempts", "min_rate") else 0
            if not value >= floor:  # also refuses nan
                raise DownloadError(f"{name}={text!r}: must be at least {floor}")
            values[f.name] = value
        return cls(**values)  # type: ignore[arg-type]


class TooLarge(DownloadError):
    """The server sent, or announced, more bytes than the download's cap."""


class _Retry(Exception):
    """A transient failure worth another attempt."""


class _Restart(_Retry):
    """The partial data can't be continued: start the file again."""


class _Clock:
    """The deadline of one download, shared by its attempts; bounds every socket wait."""

    def __init__(self, seconds: float, limits: Limits) -> None:
        self.start = time.monotonic()
        self.end = self.start + seconds
        self.limits = limits

    def tighten(self, seconds: float) -> None:
        self.end = min(self.end, self.start + seconds)

    def left(self) -> float:
        return self.end - time.monotonic()

    def wait(self, limit: float) -> float:
        """A socket timeout of at most `limit` seconds, never past the deadline."""
        left = self.left()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return min(limit, left)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, min(seconds, self.left())))


class _Socket(socket.socket):
    """TCP whose every receive waits at most the idle timeout, and never past the deadline."""

    clock: _Clock | None = None

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        if self.clock is not None:
            self.settimeout(self.clock.wait(self.clock.limits.idle_timeout))
        return super().recv_into(buffer, nbytes, flags)


class _TLSSocket(ssl.SSLSocket):
    clock: _Clock | None = None

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        if self.clock is not None:
            self.settimeout(self.clock.wait(self.clock.limits.idle_timeout))
        return super().recv_into(buffer, nbytes, flags)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.sslsocket_class = _TLSSocket
    return context


def _open_socket(clock: _Clock, address: tuple[str, int], timeout: object = None,
                 source_address: object = None) -> socket.socket:
    """socket.create_connection, making a _Socket bound by clock (http.client's hook)."""
    error: OSError = OSError(f"cannot resolve {address[0]}")
    for family, kind, proto, _, addr in socket.getaddrinfo(*address, type=socket.SOCK_STREAM):
        sock = _Socket(family, kind, proto)
        try:
            # A TLS handshake that follows inherits this timeout, for the handshake as a whole.
            sock.settimeout(clock.wait(clock.limits.connect_timeout))
            sock.connect(addr)
        except OSError as e:
            sock.close()
            error = e
            continue
        sock.clock = clock
        return sock
    raise error


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, clock: _Clock) -> None:
        super().__init__(host, port)
        self._create_connection = functools.partial(_open_socket, clock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, clock: _Clock) -> None:
        super().__init__(host, port, context=_tls_context())
        self._create_connection = functools.partial(_open_socket, clock)
        self.clock = clock

    def connect(self) -> None:
        super().connect()
        if isinstance(self.sock, _TLSSocket):
            self.sock.clock = self.clock


def _proxy(parts: SplitResult) -> SplitResult | None:
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return urlsplit(proxy if "://" in proxy else "http://" + proxy)


def _connect(url: str, clock: _Clock) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """A connection for url (direct or through a proxy), the request target, extra headers."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise DownloadError(f"{url}: not a valid port", url) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"{url}: not an http(s) URL", url)
    target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    proxy = _proxy(parts)
    if proxy is None or not proxy.hostname:
        cls = _HTTPSConnection if parts.scheme == "https" else _HTTPConnection
        return cls(parts.hostname, port, clock), target, {}
    auth = {}
    if proxy.username:
        secret = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        auth["Proxy-Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
    if parts.scheme == "http":
        return _HTTPConnection(proxy.hostname, proxy.port, clock), url, auth
    conn = _HTTPSConnection(proxy.hostname, proxy.port, clock)
    conn.set_tunnel(parts.hostname, port, headers=auth)
    return conn, target, {}


def _get(url: str, headers: dict[str, str], clock: _Clock
         ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn, target, extra = _connect(url, clock)
    try:
        conn.request("GET", target, headers={**headers, **extra})
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def _redirect_target(current: str, response: http.client.HTTPResponse) -> str:
    location = response.getheader("Location")
    if not location:
        raise _Retry(f"HTTP {response.status} redirect without a Location")
    target = urljoin(current, location.strip())
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https") or (scheme == "http" and current.startswith("https:")):
        raise DownloadError(f"{current}: redirect to {target} refused (http(s) only, never from "
                            "https to http)", current)
    return target


def _exchange(url: str, headers: dict[str, str], clock: _Clock
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, str]:
    """GET url, following at most max_redirects redirects; returns the final URL too."""
    current = url
    for _ in range(clock.limits.max_redirects + 1):
        conn, response = _get(current, headers, clock)
        if response.status not in _REDIRECT_STATUS:
            return conn, response, current
        try:
            target = _redirect_target(current, response)
        finally:
            conn.close()
        log.debug("%s: redirected to %s", current, target)
        current = target
    raise DownloadError(f"{url}: more than {clock.limits.max_redirects} redirects "
                        f"(the last to {current})", url)


@dataclass
class _Want:
    url: str
    size: int | None  # the exact size expected, when known
    cap: int  # never more bytes than this
    progress: Progress

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
        raise _Restart(f"asked for bytes {have}-, got HTTP 206 with Content-Range {value!r}")
    if response.length is not None and response.length != int(m[2]) - have + 1:
        raise _Restart(f"Content-Range {value!r} disagrees with Content-Length {response.length}")
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
        raise _Retry(f"connection closed after {pos} bytes, {response.length} short")
    return pos


def _attempt(sink: BinaryIO, want: _Want, clock: _Clock) -> str:
    """One request: resume or restart, read the body; returns the final URL."""
    have = sink.seek(0, io.SEEK_END)
    if want.size is not None and have == want.size:
        return want.url
    headers = {"User-Agent": "rpmimg", "Accept-Encoding": "identity", "Connection": "close"}
    if have:
        headers["Range"] = f"bytes={have}-"
    conn, response, final = _exchange(want.url, headers, clock)
    try:
        status = response.status
        if status == 416 and have:
            _truncate(sink, want, 0)  # what we have is no prefix of the server's file
            raise _Retry("range not satisfiable, restarting")
        if status in RETRY_STATUS:
            raise _Retry(f"HTTP {status} {response.reason}")
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
        raise _Retry(f"connection closed after {end} of {want.size} bytes")
    return final


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
    limits = limits or Limits()
    cap = size if size is not None else limit
    if cap is None or cap < 0:
        raise ValueError("download needs a size or a limit")
    want = _Want(url, size, cap, progress or (lambda n: None))
    clock = _Clock(limits.deadline(cap), limits)
    if sink.seek(0, io.SEEK_END) > cap:
        sink.truncate(0)
    want.progress(sink.seek(0, io.SEEK_END))
    last = ""
    for attempt in range(limits.attempts):
        if attempt:
            clock.sleep(min(limits.backoff * 2 ** (attempt - 1), 8.0))
        try:
            if clock.left() <= 0:
                raise TimeoutError("deadline passed")
            return _attempt(sink, want, clock)
        except _Restart as e:
            _truncate(sink, want, 0)
            last = str(e)
        except _Retry as e:
            last = str(e)
        except (OSError, http.client.HTTPException) as e:
            if clock.left() <= 0:
                got = sink.seek(0, io.SEEK_END)
                raise DownloadError(
                    f"{url}: gave up after {time.monotonic() - clock.start:.1f} s, past the deadline "
                    f"for {cap} bytes ({got} received)", url) from e
            if isinstance(e, ssl.SSLCertVerificationError):
                raise DownloadError(f"{url}: {e.verify_message or e}", url) from e
            last = _describe(e, limits)
        log.debug("%s: attempt %d: %s", url, attempt + 1, last)
    raise DownloadError(f"{url}: failed after {limits.attempts} attempts: {last}", url)


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
