"""What the last `rpmimg check` found, remembered in TOP/@rpmimg/channel.json, and the
channel part of `status`.

Kept apart from deploy.check (which fetches and verifies) so that `status` reads the
remembered result without loading the HTTP and manifest machinery it never uses.
"""

from __future__ import annotations

import json
from typing import Any

from deploy.system import System
from host.files import ReadRefused, read_limited, write_atomically
from host.log import get as logger

log = logger(__name__)

MEMORY = "channel.json"
MEMORY_LIMIT = 64 << 20


def load_memory(system: System) -> dict[str, Any]:
    """What the last check wrote, or {} (a damaged file is ignored: the next check rewrites it)."""
    path = system.layout.root / MEMORY
    try:
        value = json.loads(read_limited(path, MEMORY_LIMIT))
    except FileNotFoundError:
        return {}
    except (OSError, ReadRefused, ValueError) as e:
        log.warning("%s: ignored: %s", path, e)
        return {}
    return value if isinstance(value, dict) else {}


def save_memory(system: System, value: dict[str, Any]) -> None:
    system.layout.root.mkdir(parents=True, exist_ok=True)
    write_atomically(system.layout.root / MEMORY, json.dumps(value, sort_keys=True).encode())


def last_check(system: System) -> dict[str, Any] | None:
    """For `status`: when the last check ran and what it found (None: never)."""
    memory = load_memory(system)
    if "checked" not in memory:
        return None
    return {k: memory.get(k) for k in ("checked", "result", "version", "mirror", "error")}


def channel_status(system: System) -> dict[str, Any]:
    """`status --json`'s channel part: {"channel": ..., "last_check": ...}, nulls when absent.

    A channel configuration that does not parse is shown as its error, not raised: status
    must work on a machine whose channel is broken.
    """
    from deploy.channel import ChannelError, load

    try:
        channel = load(system.sysroot)
    except ChannelError as e:
        return {"channel": {"error": str(e)}, "last_check": last_check(system)}
    return {"channel": channel.to_json() if channel else None, "last_check": last_check(system)}
