"""rpm-md repositories: repomd.xml, and the primary and filelists files it points to.

Remote metadata is fetched into a cache directory and checked against repomd.xml;
file:// repositories are read in place. Metadata files may be gzip, xz, zstd or
bzip2 compressed; they are handed to libsolv uncompressed (see `open_uncompressed`).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import lzma
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import quote, unquote, urljoin, urlsplit

import zstandard

from solver.definition import RepoSource
from solver.errors import ComposeFetchError, RepoError
from solver.fetch import METADATA_LIMIT, Checksum, Fetcher, FetchItem, local_path
from solver.trust import MAX_REPOMD, MAX_SIGNATURE, fetch_small, verify_detached

REPO_NS = "{http://linux.duke.edu/metadata/repo}"
# Decompressed metadata at most (and exactly repomd's open-size, when it gives one); the
# largest real file, Tumbleweed's filelists, is well below it.
MAX_METADATA = 1 << 30
MAX_TEXT = 16 << 20  # bytes of one XML text (a description, a changelog) at most
CHUNK = 1 << 20


@dataclass(frozen=True)
class MetadataFile:
    """One `<data>` entry of repomd.xml."""

    type: str
    location: str
    checksum: Checksum
    size: int | None
    open_size: int | None = None  # the decompressed size repomd promises
    open_checksum: Checksum | None = None


class Repository:
    """An rpm-md repository whose repomd.xml has been read; metadata files load on demand."""

    def __init__(self, source: RepoSource, repomd: bytes, fetcher: Fetcher,
                 cache: Path | None, *, signed_by: str | None = None) -> None:
        self.source = source
        self.repomd_sha256 = hashlib.sha256(repomd).hexdigest()
        self.fetcher = fetcher
        self.cache = cache
        self.signed_by = signed_by  # fingerprint of the key that signed repomd.xml
        self.files, self.revision, self.timestamp = _parse_repomd(source, repomd)
        for entry in self.files.values():
            self.check_strength(entry.checksum, f"repomd.xml entry {entry.type!r}")
            self.url_of(entry.location)

    @classmethod
    def open(cls, source: RepoSource, *, fetcher: Fetcher | None = None,
             cache: Path | None = None, key: bytes | None = None) -> Repository:
        """Read a repository's repomd.xml (remote ones need a `cache` directory).

        With `key`, repomd.xml must carry a valid detached signature (repomd.xml.asc)
        by that key, as zypper's repo_gpgcheck demands.
        """
        fetcher = fetcher or Fetcher()
        url = urljoin(source.url, "repodata/repomd.xml")
        label = f"repository {source.name!r}"
        if local_path(url) is None and cache is None:
            raise RepoError(f"{label}: a cache directory is needed for {url}")
        scratch = cache or Path("/nonexistent")
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        repomd = fetch_small(fetcher, url, scratch / "repomd.xml", MAX_REPOMD,
                             f"{label} repomd.xml")
        signed_by = None
        if key is not None:
            signature = fetch_small(fetcher, url + ".asc", scratch / "repomd.xml.asc",
                                    MAX_SIGNATURE, f"{label} repomd.xml.asc")
            signed_by = verify_detached(key, repomd, signature, f"{label} repomd.xml")
        return cls(source, repomd, fetcher, cache, signed_by=signed_by)

    @property
    def name(self) -> str:
        return self.source.name

    def check_strength(self, checksum: Checksum, what: str) -> None:
        if checksum.weak and not self.source.allow_weak_checksums:
            raise RepoError(f"repository {self.name!r}: {what} has a weak {checksum.algo} "
                            "checksum (set allow_weak_checksums = true for this repository "
                            "to accept it)")

    def url_of(self, location: str) -> str:
        """The absolute URL of a location, which must stay inside the repository."""
        base = self.source.url
        parts = urlsplit(location)
        segments = unquote(parts.path).replace("\\", "/").split("/")
        if (parts.scheme or parts.netloc or location.startswith(("/", "\\")) or ".." in segments
                or parts.query or parts.fragment or not location.strip()):
            raise RepoError(f"repository {self.name!r}: location {location[:200]!r} leaves "
                            "the repository")
        url = urljoin(base, quote(location))
        root = local_path(base)
        path = local_path(url)
        if not url.startswith(base):
            raise RepoError(f"repository {self.name!r}: location {location[:200]!r} leaves "
                            "the repository")
        if root is not None and path is not None:
            real_root = os.path.realpath(root)
            if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
                raise RepoError(f"repository {self.name!r}: {location[:200]!r} is a symlink "
                                "leading out of the repository")
        return url

    def metadata(self, kind: str) -> Path | None:
        """The checked, possibly compressed file of one metadata type; None if repomd lacks it."""
        entry = self.files.get(kind)
        if entry is None:
            return None
        dest = (self.cache or Path("/nonexistent")) / Path(entry.location).name
        label = f"repository {self.name!r} {kind} metadata"
        try:
            path = self.fetcher.fetch(FetchItem(self.url_of(entry.location), dest,
                                                entry.checksum, label, entry.size,
                                                limit=METADATA_LIMIT))
        except ComposeFetchError as e:
            raise RepoError(str(e)) from e
        if entry.size is not None and path.stat().st_size != entry.size:
            raise RepoError(f"{label}: {path.stat().st_size} bytes, but repomd.xml lists "
                            f"{entry.size}")
        return path

    def open_metadata(self, kind: str) -> IO[bytes] | None:
        """A checked metadata file decompressed into a temporary file, within its limits."""
        path = self.metadata(kind)
        if path is None:
            return None
        entry = self.files[kind]
        limit = min(entry.open_size, MAX_METADATA) if entry.open_size is not None else MAX_METADATA
        return open_uncompressed(path, limit=limit, expect=entry.open_checksum,
                                 label=f"repository {self.name!r} {kind} metadata",
                                 scratch=self.cache)


def _number(element: ET.Element | None) -> int | None:
    text = (element.text or "").strip() if element is not None else ""
    return int(text) if text.isdigit() and len(text) < 20 else None


def _checksum(element: ET.Element | None, what: str) -> Checksum | None:
    if element is None or not (element.text or "").strip():
        return None
    algo = {"sha": "sha1"}.get(element.get("type", ""), element.get("type", ""))
    try:
        return Checksum.parse(f"{algo}:{(element.text or '').strip()}")
    except ValueError as e:
        raise RepoError(f"{what}: {e}") from e


def _parse_repomd(source: RepoSource, repomd: bytes) -> tuple[dict[str, MetadataFile], str, int]:
    """repomd's files by type, its revision and its newest timestamp (0 if none)."""
    try:
        root = ET.fromstring(repomd)
    except ET.ParseError as e:
        raise RepoError(f"repository {source.name!r}: repomd.xml is not XML: {e}") from e
    if root.tag != f"{REPO_NS}repomd":
        raise RepoError(f"repository {source.name!r}: repomd.xml has root <{root.tag[:80]}>, not <repomd>")
    files: dict[str, MetadataFile] = {}
    newest = 0
    for data in root.iter(f"{REPO_NS}data"):
        kind = data.get("type", "")[:80]
        what = f"repository {source.name!r}: repomd.xml entry {kind!r}"
        location = data.find(f"{REPO_NS}location")
        checksum = _checksum(data.find(f"{REPO_NS}checksum"), what)
        if location is None or checksum is None or not location.get("href"):
            raise RepoError(f"{what} lacks location or checksum")
        newest = max(newest, _number(data.find(f"{REPO_NS}timestamp")) or 0)
        files[kind] = MetadataFile(
            kind, location.get("href", ""), checksum, _number(data.find(f"{REPO_NS}size")),
            _number(data.find(f"{REPO_NS}open-size")),
            _checksum(data.find(f"{REPO_NS}open-checksum"), what),
        )
    if "primary" not in files:
        raise RepoError(f"repository {source.name!r}: repomd.xml lists no primary metadata")
    revision = root.find(f"{REPO_NS}revision")
    return files, ((revision.text or "").strip()[:80] if revision is not None else ""), newest


# Each opener returns a readable, closable stream (GzipFile, LZMAFile, zstd reader, BZ2File).
Decompressor = Callable[[BinaryIO], Any]

_MAGIC: tuple[tuple[bytes, Decompressor], ...] = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f)),
    (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f)),
    (b"\x28\xb5\x2f\xfd", lambda f: zstandard.ZstdDecompressor().stream_reader(f)),
    (b"BZh", lambda f: bz2.BZ2File(f)),
)


def open_uncompressed(path: Path, *, limit: int = MAX_METADATA, expect: Checksum | None = None,
                      label: str | None = None, scratch: Path | None = None) -> IO[bytes]:
    """An unnamed temporary file holding `path` decompressed (by its magic bytes).

    Decompression streams and stops as soon as more than `limit` bytes come out, so
    a small bomb costs neither memory nor disk. libsolv's own decompression depends on
    how it was built (the PyPI wheel lacks xz and zstd), so libsolv reads plain XML.
    """
    label = label or os.fspath(path)
    out = tempfile.TemporaryFile(prefix="rpmimg-md-", dir=scratch)
    digest = hashlib.new(expect.algo) if expect is not None else None
    try:
        with open(path, "rb") as raw:
            head = raw.read(6)
            raw.seek(0)
            opener = next((o for magic, o in _MAGIC if head.startswith(magic)), None)
            with (opener(raw) if opener is not None else contextlib.nullcontext(raw)) as stream:
                total = text = 0
                while chunk := stream.read(CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise RepoError(f"{label}: decompresses to more than {limit} bytes")
                    # A run without markup (one huge description) is parsed into memory
                    # whole by libsolv: no real metadata has one anywhere near this long.
                    last = chunk.rfind(b"<")
                    text = text + len(chunk) if last < 0 else len(chunk) - last - 1
                    if text > MAX_TEXT:
                        raise RepoError(f"{label}: holds a text of more than {MAX_TEXT} bytes "
                                        "without markup")
                    out.write(chunk)
                    if digest is not None:
                        digest.update(chunk)
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as e:
        out.close()
        raise RepoError(f"{label}: cannot decompress: {e}") from e
    except BaseException:
        out.close()
        raise
    if expect is not None and digest is not None and digest.hexdigest() != expect.hex:
        out.close()
        raise RepoError(f"{label}: decompressed content does not match repomd's open-checksum")
    out.seek(0)
    return out
