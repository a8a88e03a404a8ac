"""Real servers on 127.0.0.1 for transport tests: an HTTP server with Range support and
fault injection, and an rsync daemon with its configuration in a temporary directory."""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fixtures.rsyncd


@dataclass
class Faults:
    """What the HTTP server does wrong, per request path suffix."""

    cut_after: dict[str, int] = field(default_factory=dict)  # close after N bytes, once
    corrupt: set[str] = field(default_factory=set)  # flip a byte in every response
    fail_first: dict[str, int] = field(default_factory=dict)  # answer 503 N times
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    answers: list[tuple[str, int]] = field(default_factory=list)  # (path, status)


def _handler(root: Path, faults: Faults) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            faults.requests.append((self.path, rng))
            path = root / self.path.lstrip("/")
            for suffix, n in list(faults.fail_first.items()):
                if self.path.endswith(suffix) and n > 0:
                    faults.fail_first[suffix] = n - 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            if not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            # Validators as a static web server gives them; a match is answered 304.
            etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            modified = email.utils.formatdate(path.stat().st_mtime, usegmt=True)
            if self.headers.get("If-None-Match") == etag or (
                    "If-None-Match" not in self.headers
                    and self.headers.get("If-Modified-Since") == modified):
                faults.answers.append((self.path, 304))
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            faults.answers.append((self.path, 200))
            if any(self.path.endswith(s) for s in faults.corrupt):
                data = data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:]
            start = 0
            if rng and rng.startswith("bytes="):
                start = int(rng[6:].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
            self.end_headers()
            for suffix, n in list(faults.cut_after.items()):
                if self.path.endswith(suffix):
                    del faults.cut_after[suffix]
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.close_connection = True
                    return
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def http_server(root: Path, faults: Faults | None = None) -> Iterator[str]:
    """Serve root on an ephemeral port of 127.0.0.1; yields the base URL."""
    faults = faults if faults is not None else Faults()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, faults))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def rsync_daemon(root: Path, workdir: Path, module: str = "images") -> Iterator[str]:
    """Run `rsync --daemon` serving root as `module`; yields rsync://127.0.0.1:PORT/module."""
    with fixtures.rsyncd.rsync_daemon(root, workdir, module) as daemon:
        yield daemon.url
