"""A hostile HTTP server on 127.0.0.1 for tests.

It serves a directory honestly (with Range), except for request paths given a `Rule`:
then it lies about lengths, sends without end, sends a gzip bomb as Content-Encoding,
trickles, stays silent, redirects in a loop or elsewhere, ignores or mangles Range,
fails first, or cuts the connection. Each server runs in threads of its own, started per
test (`serve`); every loop is bounded in bytes and time, and ends when the server stops.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# No handler runs longer than this, whatever its rule says.
MAX_SECONDS = 120.0
ZEROS = bytes(1 << 16)


class Mode(enum.Enum):
    LONG_LENGTH = "Content-Length larger than the body by `size` bytes; the body, then close"
    SHORT_LENGTH = "Content-Length `size` bytes short of the body, which is sent whole"
    ENDLESS = "no Content-Length, zeros until the client leaves (at most `size` bytes)"
    HUGE = "Content-Length `size`, and that many zeros"
    GZIP_BOMB = "Content-Encoding: gzip, a gzip stream that inflates to `size` zero bytes"
    TRICKLE = "the file's headers, then its body one byte every `interval` seconds"
    TRICKLE_HEADERS = "the status line and headers one byte every `interval` seconds"
    SILENT = "accept the request and answer nothing"
    REDIRECT_LOOP = "302 back to the same path"
    REDIRECT = "302 to `target`"
    IGNORE_RANGE = "200 and the whole file, whatever Range asks"
    BAD_RANGE = "206 with a Content-Range starting at the wrong byte (0), body from 0"
    FAIL = "answer the statuses in `statuses`, one per request"
    CUT = "send `size` bytes of the body, then drop the connection"


@dataclass
class Rule:
    mode: Mode
    size: int = 0
    interval: float = 0.5
    target: str = ""
    statuses: list[int] = field(default_factory=list)
    times: int | None = None  # requests the rule applies to; afterwards the path is honest


@dataclass(frozen=True)
class Request:
    path: str
    range: str | None
    accept_encoding: str | None


@dataclass
class HostileServer:
    url: str  # base URL ending in "/"
    root: Path
    rules: dict[str, Rule]  # by path suffix ("manifest.json", "/pkgs/a.rpm")
    requests: list[Request] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)  # body bytes sent, by path
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rule_for(self, path: str) -> Rule | None:
        with self.lock:
            for suffix, rule in self.rules.items():
                if path.endswith(suffix):
                    if rule.times is not None:
                        if rule.times <= 0:
                            return None
                        rule.times -= 1
                    return rule
        return None

    def count(self, path: str, n: int) -> None:
        with self.lock:
            self.sent[path] = self.sent.get(path, 0) + n


@functools.cache
def gzip_bomb(size: int) -> bytes:
    """A valid gzip stream of `size` zero bytes (a multiple of 1 MiB), about size/1000 long.

    Built from one full-flushed deflate block of 1 MiB of zeros repeated, which is far
    quicker than compressing gigabytes."""
    mib, z = size >> 20, bytes(1 << 20)
    assert mib > 1 and size == mib << 20
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = c.compress(z) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(z) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(z, crc)
    # An empty final fixed-Huffman block, then the gzip trailer (CRC-32, size mod 2**32).
    return first + block * (mib - 1) + b"\x03\x00" + struct.pack("<II", crc, size & 0xFFFFFFFF)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    @property
    def hostile(self) -> HostileServer:
        return self.server.hostile

    def _alive(self, started: float) -> bool:
        return not self.hostile.stop.is_set() and time.monotonic() - started < MAX_SECONDS

    def _send(self, data: bytes, path: str) -> None:
        self.wfile.write(data)
        self.hostile.count(path, len(data))

    def _zeros(self, path: str, n: int) -> None:
        started = time.monotonic()
        while n > 0 and self._alive(started):
            chunk = ZEROS[: min(n, len(ZEROS))]
            self._send(chunk, path)
            n -= len(chunk)

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hostile.requests.append(
            Request(path, self.headers.get("Range"), self.headers.get("Accept-Encoding")))
        rule = self.hostile.rule_for(path)
        target = (self.hostile.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.hostile.root) or not target.is_file():
            data = None
        else:
            data = target.read_bytes()
        if rule is None:
            self._honest(path, data)
        else:
            self.close_connection = True
            self._hostile(path, data or b"", rule)

    def _honest(self, path: str, data: bytes | None, honour_range: bool = True) -> None:
        if data is None:
            self._head(404, {"Content-Length": "0"})
            return
        start, status, extra = 0, 200, {}
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if wanted and honour_range:
            start, status = int(wanted.group(1)), 206
            if start >= len(data):
                self._head(416, {"Content-Length": "0", "Content-Range": f"bytes */{len(data)}"})
                return
            extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        self._head(status, {"Content-Length": str(len(data) - start), **extra})
        self._send(data[start:], path)

    def _hostile(self, path: str, data: bytes, rule: Rule) -> None:
        mode = rule.mode
        if mode is Mode.LONG_LENGTH:
            self._head(200, {"Content-Length": str(len(data) + rule.size)})
            self._send(data, path)
        elif mode is Mode.SHORT_LENGTH:
            self._head(200, {"Content-Length": str(max(len(data) - rule.size, 0))})
            self._send(data, path)
        elif mode is Mode.ENDLESS:
            self._head(200, {"Connection": "close"})
            self._zeros(path, rule.size or 1 << 40)
        elif mode is Mode.HUGE:
            self._head(200, {"Content-Length": str(rule.size)})
            self._zeros(path, rule.size)
        elif mode is Mode.GZIP_BOMB:
            bomb = gzip_bomb(rule.size)
            self._head(200, {"Content-Length": str(len(bomb)), "Content-Encoding": "gzip"})
            self._send(bomb, path)
        elif mode in (Mode.TRICKLE, Mode.TRICKLE_HEADERS, Mode.SILENT):
            self._slow(path, data, rule)
        elif mode is Mode.REDIRECT_LOOP:
            self._head(302, {"Location": path, "Content-Length": "0"})
        elif mode is Mode.REDIRECT:
            self._head(302, {"Location": rule.target, "Content-Length": "0"})
        elif mode is Mode.IGNORE_RANGE:
            self._honest(path, data, honour_range=False)
        elif mode is Mode.BAD_RANGE:
            self._head(206, {"Content-Length": str(len(data)),
                             "Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"})
            self._send(data, path)
        elif mode is Mode.FAIL:
            status = rule.statuses.pop(0) if rule.statuses else 500
            self._head(status, {"Content-Length": "0"})
        elif mode is Mode.CUT:
            self._cut(path, data, rule.size)

    def _slow(self, path: str, data: bytes, rule: Rule) -> None:
        started = time.monotonic()
        if rule.mode is Mode.SILENT:
            while self._alive(started):
                time.sleep(0.05)
            return
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        if rule.mode is Mode.TRICKLE:
            self._send(head, path)
            head, data = b"", data
        else:
            head, data = head, b""
        for byte in (head + data):
            if not self._alive(started):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            self.hostile.count(path, 1)
            self.hostile.stop.wait(rule.interval)

    def _cut(self, path: str, data: bytes, after: int) -> None:
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(wanted.group(1)) if wanted else 0
        headers = {"Content-Length": str(len(data) - start)}
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._head(206 if start else 200, headers)
        self._send(data[start:start + after], path)
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, hostile: HostileServer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hostile = hostile

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client leaving mid-body is what most rules expect


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", os.fspath(key), "-out", os.fspath(cert)],
                   check=True, capture_output=True)
    return cert, key


@contextlib.contextmanager
def serve(root: Path, rules: dict[str, Rule] | None = None,
          tls: tuple[Path, Path] | None = None) -> Iterator[HostileServer]:
    """Serve root on an ephemeral port of 127.0.0.1 with `rules` while the context is open;
    over HTTPS with `tls` (certificate, key)."""
    hostile = HostileServer("", root.resolve(), dict(rules or {}))
    server = _Server(hostile)
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
        scheme = "https"
    hostile.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield hostile
    finally:
        hostile.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def trickle_tcp(greeting: bytes, interval: float) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that sends `greeting` one byte every `interval` seconds to
    each client (a stand-in for any slow-talking daemon, e.g. rsync's); yields its port."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)

    def talk(conn: socket.socket) -> None:
        started = time.monotonic()
        with conn, contextlib.suppress(OSError):
            for byte in greeting:
                if stop.is_set() or time.monotonic() - started > MAX_SECONDS:
                    return
                conn.sendall(bytes([byte]))
                stop.wait(interval)
            stop.wait(MAX_SECONDS - (time.monotonic() - started))

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=talk, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()
