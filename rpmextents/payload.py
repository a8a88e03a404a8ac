"""Reading an original package's compressed payload, with its digests."""

from __future__ import annotations

import bz2
import io
import lzma
import os
import queue
import threading
import zlib
from collections.abc import Callable
from typing import IO, Any, BinaryIO, cast

from host import digest
from rpmextents.errors import UnsupportedPackageError

CHUNK = 1 << 20


class HashingReader(io.RawIOBase):
    """Reads a file to its end, feeding every byte to the given hashes."""

    def __init__(
        self, f: BinaryIO, hashes: list[Any], total: int = 0,
        progress: Callable[[int, int], None] | None = None,
        background: Background | None = None,
    ) -> None:
        self._f = f
        self._hashes = hashes
        self._background = background
        self._total = total
        self._progress = progress
        self.done = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(len(buffer))
        n = len(data)
        if n:
            memoryview(buffer)[:n] = data
            for h in self._hashes:
                if self._background is not None:
                    self._background.submit(h.update, data)
                else:
                    h.update(data)
            self.done += n
            if self._progress is not None:
                self._progress(self.done, self._total)
        return n

    def drain(self) -> None:
        """Read (and hash) whatever the decompressor left unread."""
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass


class GzipReader:
    """gzip members decompressed by zlib, which also checks each member's CRC and size.

    Python's GzipFile computes the CRC again in a separate pass; this does not.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._z = zlib.decompressobj(wbits=31)
        self._in = b""
        self._eof = False

    def read(self, n: int = CHUNK) -> bytes:
        while not self._eof:
            if self._z.eof:
                rest = self._z.unused_data or self._raw.read(CHUNK)
                if not rest.strip(b"\0"):
                    self._eof = True  # what follows is left for the caller's digest
                    break
                self._z = zlib.decompressobj(wbits=31)  # another gzip member follows
                self._in = rest
                continue
            if not self._in:
                self._in = self._raw.read(CHUNK)
                if not self._in:
                    raise EOFError("the compressed payload ends inside its gzip stream")
            data = self._z.decompress(self._in, n)
            self._in = self._z.unconsumed_tail
            if data:
                return data
        return b""


def sniff(magic: bytes) -> str:
    """The payload compressor from its first bytes (rpm itself reads unknown
    "gzip" payloads that are not compressed at all, so the tag is not enough)."""
    if magic.startswith(b"\x1f\x8b"):
        return "gzip"
    if magic.startswith(b"BZh"):
        return "bzip2"
    if magic.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if magic.startswith(b"0707"):
        return "none"
    if magic[:1] == b"\x5d" and magic[1:3] == b"\x00\x00":
        return "lzma"
    raise UnsupportedPackageError(f"unknown payload compression (payload starts with {magic[:6].hex()})")


def open_payload(raw: HashingReader, compressor: str) -> IO[bytes]:
    """A reader of the uncompressed payload over the raw (compressed) one."""
    buffered = io.BufferedReader(raw, CHUNK)
    if compressor == "gzip":
        return cast(IO[bytes], GzipReader(buffered))
    if compressor == "bzip2":
        return cast(IO[bytes], bz2.BZ2File(buffered, "rb"))
    if compressor == "xz":
        return cast(IO[bytes], lzma.LZMAFile(buffered, "rb", format=lzma.FORMAT_XZ))
    if compressor == "lzma":
        return cast(IO[bytes], lzma.LZMAFile(buffered, "rb", format=lzma.FORMAT_ALONE))
    if compressor == "zstd":
        import zstandard  # only zstd payloads need it

        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(
            buffered, read_size=CHUNK, read_across_frames=True
        )
        return reader
    if compressor == "none":
        return buffered
    raise UnsupportedPackageError(f"unsupported payload compressor {compressor!r}")


def new_hash(algo: str) -> Any:
    return digest.new(algo, None)  # a whole payload, of unknown size: hashlib


class Background:
    """One worker thread running submitted calls in order.

    hashlib's objects (new_hash's) and pwrite release the GIL on large buffers, so
    hashing and writing here overlap decompression in the caller's thread. Only immutable buffers may
    be submitted. The first error is raised again by submit() or close().
    """

    def __init__(self, depth: int = 32) -> None:
        self._queue: queue.Queue[tuple[Callable[..., object], tuple[object, ...]] | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rpmextents-io", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                fn, args = item
                try:
                    fn(*args)
                except BaseException as e:
                    self._error = e

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((fn, args))

    def close(self) -> None:
        """Wait for every submitted call; raise the first error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


def pwrite_all(fd: int, data: memoryview | bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class Prefetch:
    """Reads a decompressing reader ahead on its own thread.

    Decompressors release the GIL, so the payload is decompressed while the
    caller parses what came before. read() returns the next chunk whatever its
    size; errors from the reader are raised again there.
    """

    _END = object()

    def __init__(self, reader: IO[bytes], chunk: int = CHUNK, depth: int = 8) -> None:
        self._reader = reader
        self._chunk = chunk
        self._queue: queue.Queue[object] = queue.Queue(depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="rpmextents-decompress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._reader.read(self._chunk)
                self._put(data if data else self._END)
                if not data:
                    return
        except BaseException as e:
            self._put(e)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        item = self._queue.get()
        if item is self._END:
            self._done = True
            return b""
        if isinstance(item, BaseException):
            self._done = True
            raise item
        assert isinstance(item, bytes)
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
