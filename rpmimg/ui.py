"""Terminal output for the CLI: one-line errors, JSON, and progress bars."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO


class UsageError(Exception):
    """A mistake in how the command was called; printed as one line."""


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 file', '2 files' ('1 mismatch', '2 mismatches' with many given)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class Progress:
    """A one-line progress bar on a terminal; otherwise one plain line when a phase that
    took a second or more completes (so logs show where the time went).

    Call it as a progress callback: ``progress(done, total)``.
    """

    PLAIN_AFTER = 1.0  # seconds

    def __init__(self, label: str, stream: TextIO | None = None, unit: str = "bytes") -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.unit = unit
        self.tty = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self._last = 0.0
        self._started = time.monotonic()
        self._shown = False
        self._files = ""
        self._done: tuple[int, int] | None = None

    def files(self, done: int, total: int) -> None:
        """Also show how many of `total` files are complete (a fetch's packages)."""
        self._files = f" {done}/{total} files"
        self._last = 0.0

    def _amount(self, done: int, total: int) -> str:
        if self.unit == "bytes":
            return f"{human_bytes(done)}/{human_bytes(total)}{self._files}"
        return f"{done}/{total} {self.unit}"

    def __call__(self, done: int, total: int) -> None:
        self._done = (done, total)
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        frac = done / total if total else 1.0
        width = 30
        bar = "#" * int(frac * width)
        self.stream.write(f"\r{self.label} [{bar:<{width}}] {frac * 100:5.1f}% {self._amount(done, total)}  ")
        self.stream.flush()
        self._shown = True

    def plain_line(self) -> str | None:
        """The line a finished slow phase leaves off a terminal (None: nothing to say)."""
        elapsed = time.monotonic() - self._started
        if self.tty or self._done is None or elapsed < self.PLAIN_AFTER:
            return None
        done, total = self._done
        return f"{self.label}: {self._amount(done, total)} ({elapsed:.1f} s)\n" if done >= total else None

    def close(self, summary: str | None = None, plain: bool = True) -> None:
        """Clear the bar; with plain, write the phase's plain line (see plain_line)."""
        if self._shown:
            self.stream.write("\r\033[K")
            self._shown = False
        line = self.plain_line() if plain else None
        if summary:
            elapsed = time.monotonic() - self._started
            self.stream.write(f"{self.label}: {summary} ({elapsed:.1f} s)\n")
        elif line:
            self.stream.write(line)
        self._done = None
        self.stream.flush()
