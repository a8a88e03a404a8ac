"""Repository freshness: signed metadata may not go back in time, nor stand still too long.

Compose remembers, per repository (name and URL), the newest repomd.xml it has accepted (revision,
newest timestamp, digest and when it was first seen) in OUTPUT/.state/repos.json.
A mirror that serves older metadata than that (a replay of an old, correctly signed
repomd) is refused; one whose metadata is older than the definition's
`max_metadata_age` (a frozen mirror) fails the compose, naming the repository.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from solver.confine import Output
from solver.definition import RepoSource
from solver.errors import RepoError
from solver.repodata import Repository

STATE = ".state/repos.json"
MAX_STATE = 4 << 20


@dataclass(frozen=True)
class Seen:
    """The newest repomd.xml accepted from one repository."""

    revision: str
    timestamp: int
    repomd_sha256: str
    first_seen: int  # unix time this repomd was first accepted

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision, "timestamp": self.timestamp,
                "repomd_sha256": self.repomd_sha256, "first_seen": self.first_seen}


def load(out: Output) -> dict[str, Seen]:
    try:
        fd = out.open(STATE, os.O_RDONLY)
    except FileNotFoundError:
        return {}
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_STATE + 1)
    try:
        raw = json.loads(data)
        return {name: Seen(str(v["revision"]), int(v["timestamp"]), str(v["repomd_sha256"]),
                           int(v["first_seen"])) for name, v in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise RepoError(f"{os.fspath(out.root / STATE)}: unreadable compose state "
                        f"({e.__class__.__name__}); remove it to start afresh") from e


def save(out: Output, seen: dict[str, Seen]) -> None:
    """Write the state crash-safely: a new file, fsynced, renamed over the old one."""
    out.makedirs(".state")
    staged = f".state/.tmp-repos-{os.getpid()}.json"
    try:
        out.unlink(staged)
    except FileNotFoundError:
        pass
    body = json.dumps({n: s.to_json() for n, s in sorted(seen.items())}, indent=2) + "\n"
    out.write(staged, body.encode())
    out.replace(staged, STATE)


def key(source: RepoSource) -> str:
    """Where a repository's record is kept: by name and URL (images may share an output)."""
    return f"{source.name} {source.url}"


def _revision_key(revision: str) -> tuple[int, int | str]:
    return (0, int(revision)) if revision.isdigit() else (1, revision)


def check(repo: Repository, before: Seen | None, now: datetime) -> Seen:
    """Refuse metadata older than `before` or older than max_metadata_age; the new record."""
    stamp = int(now.timestamp())
    label = f"repository {repo.name!r}"
    current = Seen(repo.revision, repo.timestamp, repo.repomd_sha256, stamp)
    if before is not None:
        if before.repomd_sha256 == repo.repomd_sha256:
            current = before
        elif repo.timestamp < before.timestamp or (
                repo.timestamp == before.timestamp and repo.revision.isdigit()
                and before.revision.isdigit()
                and _revision_key(repo.revision) < _revision_key(before.revision)):
            raise RepoError(
                f"{label}: metadata is older than already seen (revision {repo.revision!r}, "
                f"timestamp {repo.timestamp} < {before.timestamp}); a mirror replaying old "
                "metadata?")
    limit = repo.source.max_metadata_age
    if limit is not None:
        # The signed timestamp when repomd has one, else when compose first saw it.
        since = current.timestamp or current.first_seen
        age = stamp - since
        if age > limit:
            raise RepoError(f"{label}: metadata unchanged for {_human(age)}, longer than "
                            f"max_metadata_age ({_human(limit)}); a frozen mirror?")
    return current


def _human(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds}s"
