"""A static HTTP server on 127.0.0.1 that logs every request and serves single byte
ranges (`bytes=A-B` and `bytes=A-`) the way a CDN does; or, told so, ignores Range,
or flips a byte of every range it serves of matching files (a bad mirror)."""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class RangeServer:
    root: Path
    ranges: bool = True  # honour Range; False answers every request with the whole file
    corrupt_ranges: str | None = None  # flip a byte in each 206 answer for paths ending so
    # How every 206 answer lies: "long" (more bytes, Content-Length saying so), "shifted"
    # (Content-Range one byte off), "short" (half the body, then the connection closes).
    lie: str | None = None
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    url: str = ""

    def ranged(self, suffix: str) -> list[tuple[int, int]]:
        """(start, end) of every Range request made for paths ending in suffix."""
        out = []
        for path, rng in self.requests:
            m = _RANGE.fullmatch(rng or "")
            if path.endswith(suffix) and m and m[2]:
                out.append((int(m[1]), int(m[2])))
        return out


def _handler(server: RangeServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            rng = self.headers.get("Range")
            server.requests.append((self.path, rng))
            path = server.root / self.path.lstrip("/")
            if not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            m = _RANGE.fullmatch(rng or "") if server.ranges else None
            if m is None:
                self.send_response(200)
                body = data
            else:
                start = int(m[1])
                end = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
                body = data[start:end + 1]
                if server.corrupt_ranges and self.path.endswith(server.corrupt_ranges) and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.send_response(206)
                if server.lie == "long":
                    body += b"\0" * 4096
                shift = 1 if server.lie == "shifted" else 0
                self.send_header("Content-Range", f"bytes {start + shift}-{end + shift}/{len(data)}")
                if server.lie == "short":
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[:len(body) // 2])
                    self.close_connection = True
                    return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def range_server(root: Path, **options: object) -> Iterator[RangeServer]:
    """Serve root on an ephemeral port; yields the RangeServer (its `url` set)."""
    state = RangeServer(root, **options)  # type: ignore[arg-type]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
