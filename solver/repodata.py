"""rpm-md repositories: repomd.xml, and the primary and filelists files it points to.

Remote metadata is fetched into a cache directory and checked against repomd.xml;
file:// repositories are read in place. Metadata files may be gzip, xz, zstd or
bzip2 compressed; they are handed to libsolv uncompressed (see `open_uncompressed`).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import quote, urljoin

import zstandard

from solver.definition import RepoSource
from solver.errors import FetchError, RepoError
from solver.fetch import METADATA_LIMIT, Checksum, Fetcher, FetchItem, local_path

REPO_NS = "{http://linux.duke.edu/metadata/repo}"


@dataclass(frozen=True)
class MetadataFile:
    """One `<data>` entry of repomd.xml."""

    type: str
    location: str
    checksum: Checksum
    size: int | None


class Repository:
    """An rpm-md repository whose repomd.xml has been read; metadata files load on demand."""

    def __init__(self, source: RepoSource, repomd: bytes, fetcher: Fetcher,
                 cache: Path | None) -> None:
        self.source = source
        self.repomd_sha256 = hashlib.sha256(repomd).hexdigest()
        self.fetcher = fetcher
        self.cache = cache
        self.files = _parse_repomd(source, repomd)

    @classmethod
    def open(cls, source: RepoSource, *, fetcher: Fetcher | None = None,
             cache: Path | None = None) -> Repository:
        """Read a repository's repomd.xml (remote ones need a `cache` directory)."""
        fetcher = fetcher or Fetcher()
        url = urljoin(source.url, "repodata/repomd.xml")
        path = local_path(url)
        try:
            if path is not None:
                repomd = path.read_bytes()
            else:
                if cache is None:
                    raise RepoError(f"repository {source.name!r}: a cache directory is needed for {url}")
                cache.mkdir(parents=True, exist_ok=True)
                target = cache / "repomd.xml"
                target.unlink(missing_ok=True)
                fetcher.fetch(FetchItem(url, target, None, f"repository {source.name!r}"))
                repomd = target.read_bytes()
        except FetchError as e:
            raise RepoError(f"repository {source.name!r}: cannot fetch repomd.xml: {e}") from e
        except OSError as e:
            raise RepoError(f"repository {source.name!r}: cannot read {url}: {e.strerror}") from e
        return cls(source, repomd, fetcher, cache)

    @property
    def name(self) -> str:
        return self.source.name

    def url_of(self, location: str) -> str:
        """The absolute URL of a location relative to the repository root."""
        return urljoin(self.source.url, quote(location))

    def metadata(self, kind: str) -> Path | None:
        """The checked, possibly compressed file of one metadata type; None if repomd lacks it."""
        entry = self.files.get(kind)
        if entry is None:
            return None
        dest = (self.cache or Path("/nonexistent")) / Path(entry.location).name
        try:
            return self.fetcher.fetch(FetchItem(
                self.url_of(entry.location), dest, entry.checksum,
                f"repository {self.name!r} {kind} metadata", entry.size, limit=METADATA_LIMIT,
            ))
        except FetchError as e:
            raise RepoError(str(e)) from e


def _parse_repomd(source: RepoSource, repomd: bytes) -> dict[str, MetadataFile]:
    try:
        root = ET.fromstring(repomd)
    except ET.ParseError as e:
        raise RepoError(f"repository {source.name!r}: repomd.xml is not XML: {e}") from e
    if root.tag != f"{REPO_NS}repomd":
        raise RepoError(f"repository {source.name!r}: repomd.xml has root <{root.tag}>, not <repomd>")
    files: dict[str, MetadataFile] = {}
    for data in root.iter(f"{REPO_NS}data"):
        kind = data.get("type", "")
        location = data.find(f"{REPO_NS}location")
        checksum = data.find(f"{REPO_NS}checksum")
        size = data.find(f"{REPO_NS}size")
        if location is None or checksum is None or not location.get("href") or not checksum.text:
            raise RepoError(f"repository {source.name!r}: repomd.xml entry {kind!r} lacks location or checksum")
        algo = {"sha": "sha1"}.get(checksum.get("type", ""), checksum.get("type", ""))
        try:
            parsed = Checksum.parse(f"{algo}:{checksum.text.strip()}")
        except ValueError as e:
            raise RepoError(f"repository {source.name!r}: repomd.xml entry {kind!r}: {e}") from e
        files[kind] = MetadataFile(
            kind, location.get("href", ""), parsed,
            int(size.text) if size is not None and size.text and size.text.isdigit() else None,
        )
    if "primary" not in files:
        raise RepoError(f"repository {source.name!r}: repomd.xml lists no primary metadata")
    return files


# Each opener returns a readable, closable stream (GzipFile, LZMAFile, zstd reader, BZ2File).
Decompressor = Callable[[BinaryIO], Any]

_MAGIC: tuple[tuple[bytes, Decompressor], ...] = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f)),
    (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f)),
    (b"\x28\xb5\x2f\xfd", lambda f: zstandard.ZstdDecompressor().stream_reader(f)),
    (b"BZh", lambda f: bz2.BZ2File(f)),
)


def open_uncompressed(path: Path) -> IO[bytes]:
    """An unnamed temporary file holding `path` decompressed, by its magic bytes.

    libsolv's own decompression depends on how it was built (the PyPI wheel lacks
    xz and zstd), so metadata is decompressed here and libsolv reads plain XML.
    """
    out = tempfile.TemporaryFile(prefix="rpmimg-md-")
    try:
        with open(path, "rb") as raw:
            head = raw.read(6)
            raw.seek(0)
            for magic, opener in _MAGIC:
                if head.startswith(magic):
                    with opener(raw) as stream:
                        shutil.copyfileobj(stream, out, 1 << 20)
                    break
            else:
                shutil.copyfileobj(raw, out, 1 << 20)
    except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError) as e:
        out.close()
        raise RepoError(f"{os.fspath(path)}: cannot decompress: {e}") from e
    out.seek(0)
    return out
