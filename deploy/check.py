"""`rpmimg check`: is a newer version waiting on the channel, what would it change and cost?

The last check is remembered in TOP/@rpmimg/channel.json (replaced atomically): when it
ran, its result, and the manifest, signature and rollout file it verified with their
HTTP validators, so that the next check of an unchanged channel is one conditional request
answered 304. A remembered file is verified again against the trusted keys each time: the
cache is never trusted more than the network.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.channel import Channel
from deploy.channelfetch import Fetched, Remembered, fetch_latest, fetch_rollout, version_url
from deploy.channelmemory import load_memory, save_memory
from deploy.errors import DeployError
from deploy.rollout import Decision, decide, machine_id
from deploy.signature import trusted_key_files
from deploy.state import DeploymentRecord, State, now_iso
from deploy.store import Store
from deploy.system import System
from host import digest
from host.http import Limits, Validators
from host.log import get as logger
from imagespec import rollout as rollout_file
from imagespec.diff import PackageDiff, package_diff
from imagespec.errors import ImageSpecError, ManifestError, SignatureError
from imagespec.manifest import ImageManifest, parse
from imagespec.signature import verify_detached
from rpmextents.keyring import Keyring
from rpmextents.nevra import Nevra, vercmp

log = logger(__name__)

UP_TO_DATE, AVAILABLE, HELD, FAILED = "up to date", "update available", "held by rollout", "error"


class ChannelFetchError(DeployError):
    """No mirror of the channel gave a verified manifest; names each mirror's reason."""


@dataclass(frozen=True)
class CheckResult:
    """What a check for updates found: the image, the result, and the mirror asked."""

    checked: str  # ISO 8601 UTC
    image: str
    result: str  # UP_TO_DATE, AVAILABLE or HELD
    mirror: str  # the base URL that answered
    requests: int
    not_modified: bool  # the manifest was answered 304
    version: str  # the channel's latest
    manifest_url: str  # of that version, on the mirror that answered
    current: dict[str, str] | None  # the newest deployment of the image: id, image, version
    diff: PackageDiff | None
    download_bytes: int  # what the store lacks
    download_packages: int
    rollout: Decision

    @property
    def update(self) -> bool:
        return self.result == AVAILABLE

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked, "image": self.image, "result": self.result,
            "mirror": self.mirror, "requests": self.requests, "not_modified": self.not_modified,
            "version": self.version, "manifest_url": self.manifest_url, "current": self.current,
            "update": self.update, "diff": self.diff.to_json() if self.diff else None,
            "download_bytes": self.download_bytes, "download_packages": self.download_packages,
            "rollout": self.rollout.to_json(),
        }


# --- what the last check remembered ----------------------------------------------------

def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _file_json(f: Remembered | None) -> dict[str, Any] | None:
    if f is None:
        return None
    return {"url": f.url, "data": _b64(f.data), "signature": _b64(f.signature),
            "etag": f.validators.etag, "last_modified": f.validators.last_modified}


def _file_from(value: Any) -> Remembered | None:
    """A remembered file, or None when absent or not understood (then simply not used)."""
    try:
        sig = value["signature"]
        return Remembered(
            str(value["url"]), base64.b64decode(value["data"], validate=True),
            None if sig is None else base64.b64decode(sig, validate=True),
            Validators(value["etag"], value["last_modified"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def remember_failure(system: System, channel: Channel, error: str) -> None:
    """Record a failed check for `status`, keeping what the last good one fetched."""
    memory = load_memory(system)
    memory.update({"checked": now_iso(), "image": channel.image, "result": FAILED,
                   "error": error})
    save_memory(system, memory)


# --- the check ------------------------------------------------------------------------

def newest_deployment(current: State, image: str) -> DeploymentRecord | None:
    mine = [d for d in current.deployments if d.image == image]
    best: DeploymentRecord | None = None
    for d in mine:
        if best is None or vercmp(d.version, best.version) > 0:
            best = d
    return best


def _verified(f: Remembered, keyring: Keyring, what: str) -> bytes:
    if f.signature is None:
        raise SignatureError(f"{f.url}: {what} is not signed (no .asc beside it)")
    verify_detached(f.data, f.signature, keyring, f.url)
    return f.data


def _cost(system: System, m: ImageManifest, over_http: bool) -> tuple[int, int]:
    """Bytes and packages a deploy of m would download: what the store lacks."""
    store = Store(system.layout.store)
    seen: dict[str, int] = {}
    for p in m.packages:
        if p.sha256 not in seen and not store.has(p.sha256):
            seen[p.sha256] = p.zstd.size if (over_http and p.zstd is not None) else p.size
    return sum(seen.values()), len(seen)


@dataclass(frozen=True)
class _FromMirror:
    """A mirror's newest manifest, fetched and verified."""

    mirror: str
    latest: Fetched
    manifest: ImageManifest


def _fetch_verified(fetch: Callable[[str, str, Remembered | None, Limits | None], Fetched],
                   base: str, image: str, remembered: Remembered | None, keyring: Keyring,
                   limits: Limits | None, what: str) -> tuple[Fetched, bytes | None]:
    """A file from one mirror, verified: (what was fetched, its bytes; None when absent)."""
    fetched = fetch(base, image, remembered, limits)
    file = fetched.file
    if file is None:
        return fetched, None
    try:
        return fetched, _verified(file, keyring, what)
    except SignatureError:
        if not fetched.not_modified:
            raise
    # What this machine remembered no longer verifies (damaged, or the keys changed):
    # forget it and ask for the file itself.
    log.warning("%s: the remembered copy does not verify; fetching it again", file.url)
    again = fetch(base, image, None, limits)
    again = dataclasses.replace(again, requests=again.requests + fetched.requests)
    return again, None if again.file is None else _verified(again.file, keyring, what)


def _first_mirror(channel: Channel, memory: dict[str, Any], keyring: Keyring,
                  limits: Limits | None) -> _FromMirror:
    remembered = _file_from(memory.get("manifest"))
    reasons = []
    for i, base in enumerate(channel.urls):
        try:
            fetched, data = _fetch_verified(fetch_latest, base, channel.image, remembered,
                                            keyring, limits, "the manifest")
            assert fetched.file is not None and data is not None
            m = parse(data, fetched.file.url)
            if m.name != channel.image:
                raise ManifestError(f"{fetched.file.url}: is image {m.name!r}, not {channel.image!r}")
            return _FromMirror(base, fetched, m)
        except ImageSpecError as e:
            if i + 1 < len(channel.urls):
                log.warning("%s; trying the next mirror", e)
            reasons.append(str(e))
    raise ChannelFetchError("; ".join(reasons) if len(reasons) == 1 else
                            f"no mirror of the channel gave a verified manifest: {'; '.join(reasons)}")


def _rollout(system: System, channel: Channel, mirror: str, memory: dict[str, Any],
             m: ImageManifest, keyring: Keyring, limits: Limits | None
             ) -> tuple[Decision, Remembered | None, int]:
    if not channel.rollout:
        return Decision(100, True, False), None, 0
    fetched, data = _fetch_verified(fetch_rollout, mirror, channel.image,
                                    _file_from(memory.get("rollout")), keyring, limits,
                                    "the rollout file")
    if fetched.file is None or data is None:
        return decide(None, m.name, m.version, None), None, fetched.requests
    plan = rollout_file.parse(data, fetched.file.url)
    staged = plan.version == m.version and 0 < plan.percent < 100
    machine = machine_id(system.sysroot) if staged else None
    return decide(plan, m.name, m.version, machine), fetched.file, fetched.requests


def check(system: System, channel: Channel, keyrings: Sequence[Path] = (),
          limits: Limits | None = None) -> CheckResult:
    """Fetch and verify the channel's latest version and compare it with what is deployed."""
    keys = trusted_key_files(system.sysroot, (*keyrings, *channel.key_paths(system.sysroot)))
    keyring = Keyring.read_files(keys)  # for gpgv alone
    memory = load_memory(system)
    try:
        got = _first_mirror(channel, memory, keyring, limits)
        m = got.manifest
        current = system.load_state()
        newest = newest_deployment(current, m.name)
        newer = newest is None or vercmp(m.version, newest.version) > 0
        rollout = Decision(100, True, False)
        rollout_mem, requests = _file_from(memory.get("rollout")), got.latest.requests
        if newer:
            rollout, rollout_mem, extra = _rollout(system, channel, got.mirror, memory, m, keyring,
                                                   limits)
            requests += extra
    except (ImageSpecError, DeployError) as e:
        remember_failure(system, channel, str(e))
        raise
    diff = None
    cost = (0, 0)
    if newer:
        old = [Nevra(p.name, p.epoch, p.version, p.release, p.arch) for p in newest.packages] \
            if newest is not None else []
        diff = package_diff(newest.version if newest else None, old, m.version,
                            [p.ident for p in m.packages])
        cost = _cost(system, m, got.mirror.startswith(("http:", "https:")))
    result = UP_TO_DATE if not newer else AVAILABLE if rollout.selected else HELD
    assert got.latest.file is not None
    out = CheckResult(
        checked=now_iso(), image=m.name, result=result, mirror=got.mirror, requests=requests,
        not_modified=got.latest.not_modified, version=m.version,
        manifest_url=version_url(got.mirror, m.name, m.version),
        current={"id": newest.id, "image": newest.image, "version": newest.version}
        if newest is not None else None,
        diff=diff, download_bytes=cost[0], download_packages=cost[1], rollout=rollout,
    )
    save_memory(system, {
        "checked": out.checked, "image": m.name, "result": result, "error": None,
        "version": m.version, "mirror": got.mirror,
        "manifest_sha256": digest.of("sha256", got.latest.file.data).hexdigest(),
        "manifest": _file_json(got.latest.file), "rollout": _file_json(rollout_mem),
    })
    return out
