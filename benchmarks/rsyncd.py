"""A real rsync daemon on 127.0.0.1 serving a directory, logging the bytes it sends per file."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SENT = re.compile(r"\] send (\d+) ")


@dataclass(frozen=True)
class RsyncDaemon:
    url: str  # rsync://127.0.0.1:PORT/MODULE
    log: Path

    def bytes_sent(self) -> int:
        """Bytes the daemon has sent so far (its transfer log, %b per file)."""
        if not self.log.exists():
            return 0
        return sum(int(m.group(1)) for m in _SENT.finditer(self.log.read_text()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def rsync_daemon(root: Path, work: Path, module: str = "bench") -> Iterator[RsyncDaemon]:
    """`rsync --daemon` on an ephemeral port serving root read-only; stopped on exit."""
    port = _free_port()
    log = work / "rsyncd.log"
    conf = work / "rsyncd.conf"
    conf.write_text(
        f"port = {port}\naddress = 127.0.0.1\nuse chroot = no\npid file = {work / 'rsyncd.pid'}\n"
        f"log file = {log}\ntransfer logging = yes\nlog format = %o %b %f\n"
        f"[{module}]\npath = {root}\nread only = yes\nuid = root\ngid = root\n"
    )
    proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:  # wait until it listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"rsync daemon did not start on port {port}") from None
                time.sleep(0.05)
        yield RsyncDaemon(f"rsync://127.0.0.1:{port}/{module}", log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def url_of(daemon: RsyncDaemon, root: Path, path: Path) -> str:
    """The rsync:// URL of a file under the served root."""
    return f"{daemon.url}/{os.fspath(path.relative_to(root))}"
