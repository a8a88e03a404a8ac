"""Compose: definition → solve → fetch, check, transcode → publish a signed image version.

The job is idempotent: unchanged inputs (definition, repository metadata, keys)
publish nothing, and neither does a new solution with the same packages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from imagespec.diff import PackageDiff, manifest_diff
from imagespec.manifest import CurationReport, ImageManifest, ManifestPackage, ZstdCopy
from imagespec.published import location_of, seekable_path, zstd_path
from rpmextents.files import package_files, refuse_package_db
from rpmextents.nevra import Nevra
from solver import freshness
from solver.definition import ImageDefinition
from solver.depsolve import ResolvedPackage, SolveRequest, solve
from solver.errors import DepsolveError, PublishError
from solver.fetch import Fetcher, FetchItem
from solver.headers import Signed, check_closure, check_nevra, read_header
from solver.initrd import ImagePackage, build_boot
from solver.keys import RepoKeyring
from solver.pool import PoolEntry
from solver.publish import ImageStore
from solver.repodata import Repository
from solver.signing import Signer
from solver.trust import load_repo_key


class ProgressBar(Protocol):
    def advance(self, n: int) -> None: ...
    def close(self, summary: str | None = None) -> None: ...


class Reporter(Protocol):
    """Where compose tells its progress; the CLI draws bars, tests stay silent."""

    def step(self, message: str) -> None: ...
    def bar(self, label: str, total: int, unit: str) -> ProgressBar: ...


class _Silent:
    def step(self, message: str) -> None:
        pass

    def bar(self, label: str, total: int, unit: str) -> ProgressBar:
        return self

    def advance(self, n: int) -> None:
        pass

    def close(self, summary: str | None = None) -> None:
        pass


@dataclass(frozen=True)
class ComposeResult:
    """What a compose published: the image version, whether it changed, and its manifest."""

    name: str
    version: str | None  # the newest published version after this run
    changed: bool
    manifest: Path | None
    packages: int
    diff: PackageDiff | None = None
    previous: str | None = None
    fetched: int = 0
    reused: int = 0
    pruned_versions: tuple[str, ...] = ()
    pruned_pool: tuple[str, ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "changed": self.changed,
            "previous": self.previous,
            "manifest": os.fspath(self.manifest) if self.manifest else None,
            "packages": self.packages, "fetched": self.fetched, "reused": self.reused,
            "diff": self.diff.to_json() if self.diff else None,
            "pruned_versions": list(self.pruned_versions),
            "pruned_pool_files": len(self.pruned_pool),
        }


@dataclass(frozen=True)
class _Inputs:
    """The repositories and keyrings a compose solves from, and the digest of them all."""

    repos: tuple[Repository, ...]
    keyrings: dict[str, RepoKeyring]
    digest: str


def compose(definition: ImageDefinition, output: Path, *, sign_key: Path | None = None,
            keep: int | None = None, fetcher: Fetcher | None = None,
            reporter: Reporter | None = None, now: datetime | None = None,
            allow_downgrade: tuple[str, ...] = (), zstd_level: int | None = None) -> ComposeResult:
    """Compose `definition` into `output`; publishes a new version only when something changed.

    `allow_downgrade` names packages that may go back to an older EVR than the image's
    previous version (the definition may name more). `zstd_level` is that of the zstd
    copies of new pool entries (default 19; tests with large packages use less).
    """
    report = reporter or _Silent()
    fetcher = fetcher or Fetcher()
    if sign_key is not None and not sign_key.is_file():
        # Found out now rather than after every package has been fetched and transcoded.
        raise PublishError(f"signing key {os.fspath(sign_key)} does not exist")
    with contextlib.ExitStack() as stack:
        # The key is checked (and held in a private GNUPGHOME) before anything is fetched.
        signer = stack.enter_context(Signer(sign_key)) if sign_key is not None else None
        store = ImageStore(output)
        if zstd_level is not None:
            store.pool.zstd_level = zstd_level
        stack.enter_context(store.locked())
        result = _compose_locked(definition, store, signer, keep, fetcher, report,
                                 now or datetime.now(UTC),
                                 frozenset(definition.allow_downgrade) | frozenset(allow_downgrade))
    return result


def _compose_locked(definition: ImageDefinition, store: ImageStore, signer: Signer | None,
                    keep: int | None, fetcher: Fetcher, report: Reporter, now: datetime,
                    allow_downgrade: frozenset[str]) -> ComposeResult:
    output = store.output
    store.remove_leftovers()
    try:
        inputs = _open_inputs(definition, store, fetcher, now)
        previous = store.latest(definition.name)
        old = store.manifest(definition.name, previous) if previous else None
        result = ComposeResult(definition.name, previous, False,
                               store.manifest_path(definition.name, previous) if previous else None,
                               len(old.packages) if old else 0, previous=previous)
        if old is None or old.inputs_sha256 != inputs.digest:
            result = _compose_new(definition, store, inputs, old, previous, fetcher, report,
                                  signer, now, allow_downgrade) or result
    except BaseException:
        # Nothing this run put into the pool may stay unless a published version uses it.
        used = store.referenced()
        store.remove_pool_files([rel for rel in store.pool.created if rel not in used])
        raise
    finally:
        shutil.rmtree(output / ".cache" / "packages", ignore_errors=True)
        shutil.rmtree(store.pool.scratch, ignore_errors=True)
        shutil.rmtree(output / ".cache" / "boot", ignore_errors=True)
    if keep is not None:
        pruned = store.prune(definition.name, keep)
        result = dataclasses.replace(result, pruned_versions=tuple(pruned),
                                     pruned_pool=tuple(store.collect_pool()))
    return result


def _compose_new(definition: ImageDefinition, store: ImageStore, inputs: _Inputs,
                 old: ImageManifest | None, previous: str | None, fetcher: Fetcher,
                 report: Reporter, signer: Signer | None, now: datetime,
                 allow_downgrade: frozenset[str]) -> ComposeResult | None:
    report.step(f"solving {definition.name} for {definition.arch} over "
                f"{len(inputs.repos)} repositories")
    solution = solve(SolveRequest(
        arch=definition.arch, packages=definition.packages, repos=inputs.repos,
        exclude=definition.exclude, ignore_recommends=definition.ignore_recommends,
        multiversion=definition.multiversion,
    ))
    if old is not None and _same_sources(old, solution.packages, definition.block_size):
        return None
    if old is not None:
        refuse_downgrades(old, solution.packages, allow_downgrade)
    entries, fetched, reused = _materialize(definition, store, inputs, solution.packages,
                                            fetcher, report)
    version = store.next_version(definition.name, now)
    packages = tuple(_manifest_package(e, p, src) for p, (e, src) in
                     zip(solution.packages, entries, strict=True))
    manifest = ImageManifest(
        name=definition.name, version=version, arch=definition.arch,
        created=now.strftime("%Y-%m-%dT%H:%M:%SZ"), inputs_sha256=inputs.digest,
        block_size=definition.block_size, packages=packages,
        report=_curation_report(store, [e for e, _ in entries]),
    )
    boot = build_boot(store, [ImagePackage(str(p.ident), store.output / e.relpath, e.header_sha256)
                              for p, (e, _) in zip(packages, entries, strict=True)],
                      old, report.step)
    manifest = dataclasses.replace(manifest, boot=boot)
    diff = manifest_diff(old, manifest)
    sign = signer.sign if signer is not None else None
    path = store.publish(manifest, diff.to_json(), sign)
    return ComposeResult(definition.name, version, True, path, len(packages), diff, previous,
                         fetched, reused)


def _open_inputs(definition: ImageDefinition, store: ImageStore, fetcher: Fetcher,
                 now: datetime) -> _Inputs:
    cache = store.output / ".cache"
    repos: list[Repository] = []
    keyrings: dict[str, RepoKeyring] = {}
    key_digests: dict[str, str] = {}
    seen = freshness.load(store.out)
    for source in definition.repos:
        store.out.makedirs(f".cache/repos/{source.name}")
        key = None
        if source.gpgkey is not None:
            store.out.makedirs(".cache/keys")
            key = load_repo_key(source, fetcher, cache / "keys")
            keyrings[source.name] = RepoKeyring(key, f"repository {source.name!r} key {source.gpgkey}")
            key_digests[source.name] = hashlib.sha256(key).hexdigest()
        repo = Repository.open(source, fetcher=fetcher, cache=cache / "repos" / source.name,
                               key=key)
        seen[freshness.key(source)] = freshness.check(repo, seen.get(freshness.key(source)), now)
        repos.append(repo)
    freshness.save(store.out, seen)
    digest = hashlib.sha256(json.dumps({
        "format": 1,
        "definition": definition.canonical(),
        "repomd": {r.name: r.repomd_sha256 for r in repos},
        "keys": key_digests,
    }, sort_keys=True).encode()).hexdigest()
    return _Inputs(tuple(repos), keyrings, digest)


def refuse_downgrades(old: ImageManifest, packages: tuple[ResolvedPackage, ...],
                      allowed: frozenset[str]) -> None:
    """Refuse a solution whose newest EVR of a name.arch is older than the previous image's."""
    def newest(items: list[Nevra]) -> dict[tuple[str, str], Nevra]:
        best: dict[tuple[str, str], Nevra] = {}
        for p in items:
            current = best.get((p.name, p.arch))
            if current is None or p.compare(current) > 0:
                best[(p.name, p.arch)] = p
        return best

    before = newest([p.ident for p in old.packages])
    after = newest([Nevra(p.name, p.epoch, p.version, p.release, p.arch) for p in packages])
    for (name, arch), now in sorted(after.items()):
        was = before.get((name, arch))
        if was is not None and now.compare(was) < 0 and name not in allowed:
            raise DepsolveError(
                f"{name}.{arch}: the solution downgrades it from {was.evr} to {now.evr}; "
                f"refusing (allow it with allow_downgrade = [\"{name}\"] or "
                f"--allow-downgrade {name})")


def _same_sources(old: ImageManifest, packages: tuple[ResolvedPackage, ...], block_size: int) -> bool:
    return old.block_size == block_size and (
        sorted(p.source_checksum for p in old.packages)
        == sorted(str(p.checksum) for p in packages)
    )


def _known_entries(store: ImageStore, block_size: int) -> dict[str, ManifestPackage]:
    """Pool entries already made from an original, by its checksum, so it is not fetched again."""
    known: dict[str, ManifestPackage] = {}
    for name in store.names():
        for version in store.versions(name):
            for p in store.manifest(name, version).packages:
                if p.block_size == block_size and p.zstd is not None \
                        and p.seekable is not None:
                    known[p.source_checksum] = p
    return known


def _materialize(definition: ImageDefinition, store: ImageStore, inputs: _Inputs,
                 packages: tuple[ResolvedPackage, ...], fetcher: Fetcher,
                 report: Reporter) -> tuple[list[tuple[PoolEntry, int]], int, int]:
    """Pool entries (with original sizes) for every package, fetching only what is new.

    Before anything enters the pool, every package's signed header must agree with
    what the solver was told (see solver.headers).
    """
    known = _known_entries(store, definition.block_size)
    entries: dict[str, tuple[PoolEntry, int]] = {}
    signed: list[Signed] = []
    for p in packages:
        record = known.get(str(p.checksum))
        if record is None:
            continue
        rel = os.path.normpath(os.path.join("images/x/y", record.location))
        if store.pool.has(rel):
            # The stored header is the original's, byte for byte: its signature still checks.
            header = read_header(store.output / rel, inputs.keyrings.get(p.repo), p.nevra)
            signed.append(Signed(p, header))
            entries[p.nevra] = (_entry_from_record(record, rel), record.source_size)
    todo = [p for p in packages if p.nevra not in entries]
    cache = store.output / ".cache" / "packages"
    if todo:
        store.out.makedirs(".cache/packages")
    items = [FetchItem(p.url, cache / f"{p.checksum.hex}-{Path(p.url).name}", p.checksum,
                       p.nevra, p.size) for p in todo]
    paths: list[Path] = []
    if items:
        report.step(f"fetching {len(items)} of {len(packages)} packages")
        bar = report.bar("fetch", sum(p.size or 0 for p in todo), "bytes")
        paths = fetcher.fetch_all(items, bar.advance)
        bar.close(f"{len(items)} packages")
    for p, path in zip(todo, paths, strict=True):
        signed.append(Signed(p, read_header(path, inputs.keyrings.get(p.repo), p.nevra)))
    for item in signed:
        check_nevra(item)
    check_closure(definition.arch, definition.packages, signed)
    if todo:
        bar = report.bar("transcode", len(todo), "packages")
        for p, path in zip(todo, paths, strict=True):
            refuse_package_db(p.nevra, package_files(path))
            entry = store.pool.add(path, p.nevra, block_size=definition.block_size)
            entries[p.nevra] = (entry, path.stat().st_size)
            bar.advance(1)
        bar.close(f"{len(todo)} packages into the pool")
    return [entries[p.nevra] for p in packages], len(todo), len(packages) - len(todo)


def _entry_from_record(p: ManifestPackage, rel: str) -> PoolEntry:
    if p.zstd is None or p.seekable is None or p.seekable.table_size is None \
            or p.seekable.table_sha256 is None:  # _known_entries keeps only those with both
        raise PublishError(f"{p.nevra}: pool entry {rel} has no zstd copies")
    return PoolEntry(
        name=p.name, epoch=p.epoch, version=p.version, release=p.release, arch=p.arch,
        relpath=rel, sha256=p.sha256, size=p.size, header_sha256=p.header_sha256,
        block_size=p.block_size, zstd_relpath=zstd_path(rel), zstd_sha256=p.zstd.sha256,
        zstd_size=p.zstd.size, seekable_relpath=seekable_path(rel),
        seekable_sha256=p.seekable.sha256, seekable_size=p.seekable.size,
        table_size=p.seekable.table_size, table_sha256=p.seekable.table_sha256,
    )


def _manifest_package(entry: PoolEntry, p: ResolvedPackage, source_size: int) -> ManifestPackage:
    return ManifestPackage(
        name=entry.name, epoch=entry.epoch, version=entry.version, release=entry.release,
        arch=entry.arch, sha256=entry.sha256, size=entry.size, header_sha256=entry.header_sha256,
        block_size=entry.block_size, source_checksum=str(p.checksum), source_size=source_size,
        location=location_of(entry.relpath),
        zstd=ZstdCopy(location_of(entry.zstd_relpath), entry.zstd_sha256, entry.zstd_size),
        seekable=ZstdCopy(location_of(entry.seekable_relpath), entry.seekable_sha256,
                          entry.seekable_size, entry.table_size, entry.table_sha256),
    )


def _curation_report(store: ImageStore, entries: list[PoolEntry]) -> CurationReport:
    scriptlets: list[str] = []
    triggers: list[str] = []
    outside: dict[str, tuple[str, ...]] = {}
    accounts: list[str] = []
    for e in entries:
        notes = store.pool.notes(e.relpath)
        nevra = str(Nevra(e.name, e.epoch, e.version, e.release, e.arch))
        if notes.scriptlets:
            scriptlets.append(nevra)
        if notes.triggers:
            triggers.append(nevra)
        if notes.outside_usr:
            outside[nevra] = notes.outside_usr
        if notes.accounts_by_scriptlet:
            accounts.append(nevra)
    return CurationReport(tuple(sorted(scriptlets)), tuple(sorted(triggers)), outside,
                          tuple(sorted(accounts)))
