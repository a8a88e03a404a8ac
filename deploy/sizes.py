"""Each deployment's exclusive size, measured as `btrfs filesystem du` does, and cached.

Measuring walks every file of a deployment with FIEMAP (host.kernel.exclusive_bytes): a
few seconds for 100,000 files. What it depends on changes only when a deployment is
made, repaired or removed, or a store entry goes: so the sizes are kept in
TOP/@rpmimg/sizes.json under a fingerprint of exactly that (the state file, each
deployment subvolume's btrfs generation and change transid, the store's directories'
mtimes) and measured again only when the fingerprint differs. Writing the cache is best
effort: a sysroot that can't be written to is measured every time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from deploy.system import System
from host import digest, kernel
from host.files import read_limited, write_atomically
from host.log import get as logger

log = logger(__name__)

CACHE_NAME = "sizes.json"
CACHE_LIMIT = 1 << 20
_VERSION = 1


def fingerprint(system: System, ids: Iterable[str]) -> str:
    """What the exclusive sizes of the deployments ids depend on, as one digest."""
    layout = system.layout
    h = digest.new("sha256", 1 << 16)  # a line per deployment
    h.update(f"v{_VERSION}".encode())
    st = os.stat(layout.state_file)
    h.update(f"state {st.st_ino} {st.st_size} {st.st_mtime_ns}\n".encode())
    for d in sorted(ids):
        generation, ctransid = kernel.subvolume_generation(layout.deployment(d))
        h.update(f"deployment {d} {generation} {ctransid}\n".encode())
    try:
        subdirs = sorted(os.scandir(layout.store), key=lambda e: e.name)
    except FileNotFoundError:
        subdirs = []
    for entry in subdirs:
        h.update(f"store {entry.name} {entry.stat(follow_symlinks=False).st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cached(system: System, key: str) -> dict[str, int]:
    path = system.layout.root / CACHE_NAME
    try:
        data = json.loads(read_limited(path, CACHE_LIMIT))
    except (OSError, ValueError):
        return {}
    sizes = data.get("sizes") if isinstance(data, dict) and data.get("key") == key else None
    if not isinstance(sizes, dict):
        return {}
    return {k: v for k, v in sizes.items() if isinstance(k, str) and type(v) is int and v >= 0}


def exclusive_sizes(system: System) -> dict[str, int]:
    """Deployment id -> bytes only it holds (the Exclusive column of `btrfs filesystem du -s`
    on its subvolume), from the cache when nothing they depend on changed."""
    ids = [d.id for d in system.load_state().deployments]
    if not ids:
        return {}  # nothing deployed: no state file to fingerprint, nothing to measure
    key = fingerprint(system, ids)
    sizes = _cached(system, key)
    if all(d in sizes for d in ids):
        return {d: sizes[d] for d in ids}
    sizes = {d: kernel.exclusive_bytes([system.layout.deployment(d)]) for d in ids}
    try:
        write_atomically(system.layout.root / CACHE_NAME,
                         json.dumps({"key": key, "sizes": sizes}, sort_keys=True).encode())
    except OSError as e:
        log.debug("exclusive sizes not cached: %s", e)
    return sizes
