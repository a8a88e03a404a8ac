"""What a real `pkg extract`, local `deploy` and `verify` process loads (issue 17).

At 10,000 files most of rpmimg's memory is the fixed cost of what the process loads, so
each of these runs the real command and lists the modules it had at exit: none of those
that only downloads (http.client, ssl: 5 MB), database writes (sqlite3), cffi's parser
(4.6 MB) or a large hashing job (hashlib's libcrypto: 3.5 MB) need may be among them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from deploytools import Images, deploy, state_of
from imagepub import publish

from fixtures.build import fixture_packages
from host import digest

pytest_plugins = ("deployenv",)

# Runs rpmimg's main; at exit, writes the names of the loaded modules to argv[1].
_WRAPPER = """
import atexit, json, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from rpmimg.cli import main
sys.argv[0] = "rpmimg"
sys.exit(main())
"""

NETWORK = {"http.client", "ssl", "urllib.request", "email.parser", "host.http", "host.httpconn"}
CFFI_PARSER = {"pycparser", "cffi"}
# Loaded only where used: the channel file's parser (tomllib 1.4 MB), a temporary directory
# (tempfile 1.1 MB, with shutil, bz2 and lzma), a command run (subprocess 0.9 MB), the
# transcoder, and the parsers of verbs the command line did not name.
CHANNEL_FILE = {"tomllib", "datetime"}
# tempfile and shutil, with what they bring: deploy and verify use host.files instead.
TEMPFILE = {"tempfile", "shutil", "random", "bz2", "lzma"}
# logging, with what it brings: loaded only for a message to show (host.log).
LOGGING = {"logging", "traceback"}
# inspect, with ast and dis: dataclasses loads it only for a class without a docstring
# (host.dataclasses_lean).
INSPECT = {"inspect", "ast", "dis"}
TRANSCODER = {"rpmextents.transcode", "rpmextents.cpio", "rpmextents.payload"}
OTHER_VERBS = {"rpmimg.server", "rpmimg.channel_cli", "rpmimg.rollout_cli", "rpmimg.reset",
               "rpmimg.boot", "rpmimg.install", "solver"}


def loaded(tmp_path: Path, *args: str | os.PathLike[str], ok: tuple[int, ...] = (0,),
           env: dict[str, str] | None = None) -> set[str]:
    out = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, os.fspath(out), *map(os.fspath, args)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert proc.returncode in ok, proc.stderr
    return set(json.loads(out.read_text()))


def test_extract_of_a_small_package_loads_neither_openssl_nor_the_deploy_library(tmp_path: Path) -> None:
    extents = tmp_path / "x"
    extents.mkdir()
    subprocess.run([sys.executable, "-m", "rpmimg", "pkg", "transcode", os.fspath(fixture_packages()["sizes"]),
                    "-o", os.fspath(extents)], check=True, capture_output=True)
    (rpm,) = extents.glob("*.rpm")
    modules = loaded(tmp_path, "pkg", "extract", rpm, tmp_path / "tree")
    assert (tmp_path / "tree").is_dir()
    assert not modules & {"_hashlib", "hashlib", "sqlite3", "rpm", "concurrent.futures",
                          "multiprocessing", *NETWORK, *CFFI_PARSER}
    assert not {m for m in modules if m.split(".")[0] in ("deploy", "solver", "solv")}
    assert not modules & {"tempfile", "shutil", "lzma", "subprocess", *CHANNEL_FILE, *TRANSCODER,
                          *OTHER_VERBS, "rpmimg.client"}


def test_status_loads_what_it_reads_and_nothing_else(sysroot: Path, images: Images,
                                                     tmp_path: Path) -> None:
    deploy(sysroot, images.v1, images.key)
    for _ in range(2):  # the first status measures the sizes, the next reads them back
        modules = loaded(tmp_path, "status", "--sysroot", sysroot)
        assert {"deploy.overview", "deploy.headers"} <= modules
        assert not modules & {"tempfile", "shutil", "lzma", "subprocess", "sqlite3", "hashlib",
                              "_hashlib", "rpm", "rpmextents.extract", "deploy.store", "deploy.tree",
                              "multiprocessing", *CHANNEL_FILE, *TRANSCODER, *OTHER_VERBS,
                              *NETWORK, *CFFI_PARSER}


def test_local_deploy_and_verify_load_no_network_or_parser_modules(sysroot: Path, images: Images,
                                                                    tmp_path: Path) -> None:
    deploy(sysroot, images.v1, images.key)
    modules = loaded(tmp_path, "deploy", "--sysroot", sysroot, "--keyring", images.key.public, images.v2)
    assert len(state_of(sysroot)["deployments"]) == 2  # type: ignore[arg-type]  # it did deploy v2
    assert not modules & {*NETWORK, *CFFI_PARSER, "concurrent.futures", "solv", "tomllib",
                          *TEMPFILE, *TRANSCODER, *OTHER_VERBS}
    assert "rpm" in modules  # v2's new packages: their header signatures are checked by rpm
    # (and the PyPI rpm shim imports logging: not checked here, below where rpm is not loaded)

    log = tmp_path / "checkpoints"
    modules = loaded(tmp_path, "verify", "--sysroot", sysroot, env={"RPMIMG_CHECKPOINT_LOG": os.fspath(log)})
    assert "deploy.verify" in modules
    # verify reads headers, never a package: no store, index or keyring machinery.
    assert not modules & {"deploy.store", "rpmextents.package", "rpmextents.keyring"}
    # 24 MiB of the fixture's "bulk" package: verify's hashing pool starts, its workers answer.
    assert "hashing worker answers" in log.read_text()
    assert not modules & {*NETWORK, *CFFI_PARSER, "sqlite3", "solv", *CHANNEL_FILE, *TRANSCODER,
                          *TEMPFILE, *LOGGING, *INSPECT, *OTHER_VERBS, "deploy.tree", "deploy.signature",
                          "deploy.sources"}
    # The pool is os.fork() and pipes: none of multiprocessing's machinery (1.5 MB).
    assert not {m for m in modules if m.split(".")[0] in ("multiprocessing", "concurrent")}
    assert not modules & {"pickle", "_pickle", "socket", "_socket", "queue"}

    # A deployment of packages all in the store checks no package header with rpm: its
    # bindings (8 MB resident, with libcrypto) are not loaded, not even for the keys.
    copy = publish(tmp_path / "copy", "demo-copy", "1", images.v1_rpms[:1], images.key)
    modules = loaded(tmp_path, "deploy", "--sysroot", sysroot, "--keyring", images.key.public, "--switch",
                     "--full", copy)
    assert len(state_of(sysroot)["deployments"]) == 3  # type: ignore[arg-type]
    assert "rpm" not in modules
    # Nor tempfile and shutil, nor sqlite (with datetime): rpm alone makes its database.
    assert not modules & {*TEMPFILE, *LOGGING, *INSPECT, "sqlite3", "datetime"}
    # Nor libcrypto (3.5 MB): the store's marks vouch for its entries, and a mark is a
    # digest of a few hundred bytes of btrfs items.
    assert "_hashlib" not in modules


def test_small_digests_do_not_load_openssl_and_large_ones_do() -> None:
    script = """
import sys
from host import digest
small = digest.of("sha256", b"x" * 1000).hexdigest()
assert "_hashlib" not in sys.modules, "a small digest loaded OpenSSL"
big = digest.new("sha256", digest.BUILTIN_BUDGET + 1)
assert "_hashlib" in sys.modules, "a job past the budget did not load OpenSSL"
big.update(b"x" * 1000)
assert big.hexdigest() == small  # the built-in and OpenSSL digests agree
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_digests_equal_hashlibs_either_way(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom((1 << 18) * 2 + 3)  # more than one file_digest chunk
    path = tmp_path / "data"
    path.write_bytes(data)
    for name in ("md5", "sha1", "sha224", "sha256", "sha384", "sha512"):
        want = hashlib.new(name, data).hexdigest()
        assert digest.of(name, data).hexdigest() == want
        builtin = digest._builtin(name)
        assert builtin is not None and builtin(data).hexdigest() == want, name
        with open(path, "rb", buffering=0) as f:
            assert digest.file_digest(f, name).hexdigest() == want
        h = digest.new(name, None)  # unknown size: hashlib
        h.update(data[:5])
        h.update(memoryview(data)[5:])
        assert h.hexdigest() == want
    key = os.urandom(16)
    assert digest.blake2b(b"/usr/bin/x", digest_size=8, key=key) == hashlib.blake2b(
        b"/usr/bin/x", digest_size=8, key=key).digest()


def test_a_small_files_digest_takes_no_chunk_sized_buffer(tmp_path: Path) -> None:
    """verify hashes file after file: a 256 KiB buffer for each made glibc shrink and grow
    its heap for every file (half of verify's system time on the benchmark corpus)."""
    import tracemalloc

    path = tmp_path / "small"
    path.write_bytes(b"x" * 1000)
    with open(path, "rb", buffering=0) as f:
        tracemalloc.start()
        try:
            got = digest.file_digest(f, "sha256").hexdigest()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert got == digest.of("sha256", b"x" * 1000).hexdigest()
    assert peak < 16 << 10, peak
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with open(empty, "rb", buffering=0) as f:
        assert digest.file_digest(f, "sha256").hexdigest() == digest.of("sha256", b"").hexdigest()


def test_the_format_package_loads_each_name_from_its_module_when_asked() -> None:
    script = """
import importlib, sys
import rpmextents.errors, rpmextents.nevra
heavy = {"rpmextents.extract", "rpmextents.transcode", "rpmextents.package", "rpmextents.cpio"}
assert not heavy & set(sys.modules), heavy & set(sys.modules)
import rpmextents
assert sorted(rpmextents.__all__) == sorted(rpmextents._HOMES)
for name in rpmextents.__all__:
    home = importlib.import_module("rpmextents." + rpmextents._HOMES[name])
    assert getattr(rpmextents, name) is getattr(home, name), name
from rpmextents import ExtentsPackage, extract
assert extract is sys.modules["rpmextents.extract"]  # the module: extract.extract is the function
try:
    rpmextents.no_such_name
except AttributeError:
    print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.stdout.strip() == "ok", proc.stderr
