"""The wire under host.http: sockets whose every wait is bounded by a download's clock,
connections (direct or through a proxy from the environment) and one GET with bounded
redirects; the limits that bound all of them and the errors are host.fetchlimits'.

Built on http.client over sockets this module creates: each receive sets its own timeout
to the idle timeout or what is left of the deadline, whichever is shorter, so no server
can stretch a download past its deadline, not even by trickling its headers.
"""

from __future__ import annotations

import base64
import functools
import http.client
import socket
import ssl
import time
import urllib.request
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, unquote, urljoin, urlsplit, urlunsplit

from host.fetchlimits import DownloadError, Limits
from host.log import get as logger

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logger(__name__)

_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})


class Retry(Exception):
    """A transient failure worth another attempt."""


class Restart(Retry):
    """The partial data can't be continued: start the file again."""


class Clock:
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

    clock: Clock | None = None

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        if self.clock is not None:
            self.settimeout(self.clock.wait(self.clock.limits.idle_timeout))
        return super().recv_into(buffer, nbytes, flags)


class _TLSSocket(ssl.SSLSocket):
    clock: Clock | None = None

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        if self.clock is not None:
            self.settimeout(self.clock.wait(self.clock.limits.idle_timeout))
        return super().recv_into(buffer, nbytes, flags)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.sslsocket_class = _TLSSocket
    return context


def _open_socket(clock: Clock, address: tuple[str, int], timeout: object = None,
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
    def __init__(self, host: str, port: int | None, clock: Clock) -> None:
        super().__init__(host, port)
        self._create_connection = functools.partial(_open_socket, clock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, clock: Clock) -> None:
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


def _connect(url: str, clock: Clock) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
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


def _get(url: str, headers: dict[str, str], clock: Clock
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
        raise Retry(f"HTTP {response.status} redirect without a Location")
    target = urljoin(current, location.strip())
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https") or (scheme == "http" and current.startswith("https:")):
        raise DownloadError(f"{current}: redirect to {target} refused (http(s) only, never from "
                            "https to http)", current)
    return target


def exchange(url: str, headers: dict[str, str], clock: Clock
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
