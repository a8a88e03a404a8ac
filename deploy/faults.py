"""Crash points for fault-injection tests.

Tests set RPMIMG_KILL_AT=N to make the process SIGKILL itself at the Nth checkpoint
it passes (or RPMIMG_KILL_AT=LABEL: at the first checkpoint of that label, where the
count before it depends on how threads interleave), and RPMIMG_CHECKPOINT_LOG=FILE to
record the checkpoints' labels (to learn how many there are). Unset, a checkpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_count = 0
_lock = threading.Lock()


def checkpoint(label: str) -> None:
    """Mark a point where a crash must leave the previous state intact."""
    global _count
    kill_at = os.environ.get("RPMIMG_KILL_AT")
    log_path = os.environ.get("RPMIMG_CHECKPOINT_LOG")
    if kill_at is None and log_path is None:
        return
    # Fetch workers pass checkpoints too; count them one at a time.
    with _lock:
        _count += 1
        if log_path is not None:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(f"{_count} {label}\n")
        if kill_at is not None and (_count == int(kill_at) if kill_at.isdigit() else label == kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
