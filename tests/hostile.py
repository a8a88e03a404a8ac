"""Tools for hostile-mirror tests: tamper with real createrepo_c metadata, snapshot what must not change."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.repos import add_package, createrepo, package
from fixtures.signing import SigningKey, generate_key, sign_detached
from solver.publish import ImageStore

REPOMD = Path("repodata/repomd.xml")


def _data_block(repomd: str, kind: str) -> re.Match[str]:
    match = re.search(rf'<data type="{kind}">.*?</data>', repomd, re.DOTALL)
    assert match is not None, f"repomd.xml has no {kind} entry"
    return match


def metadata_path(repo: Path, kind: str = "primary") -> Path:
    block = _data_block((repo / REPOMD).read_text(), kind).group(0)
    href = re.search(r'<location href="([^"]+)"', block)
    assert href is not None
    return repo / href.group(1)


def set_metadata(repo: Path, kind: str, packed: bytes, *, open_size: int | None,
                 open_sha256: str | None = None, href: str | None = None) -> None:
    """Replace a metadata file's bytes, fixing repomd's checksum, size and open-* (or dropping them)."""
    old = metadata_path(repo, kind)
    old.unlink()
    digest = hashlib.sha256(packed).hexdigest()
    target = repo / (href or f"repodata/{digest}-{kind}.xml{''.join(old.suffixes[-1:])}")
    target.write_bytes(packed)
    text = (repo / REPOMD).read_text()
    block = _data_block(text, kind)
    new = block.group(0)
    new = re.sub(r'<checksum type="\w+">\w+</checksum>',
                 f'<checksum type="sha256">{digest}</checksum>', new)
    new = re.sub(r'<location href="[^"]+"/>',
                 f'<location href="{href or target.relative_to(repo).as_posix()}"/>', new)
    new = re.sub(r"<size>\d+</size>", f"<size>{len(packed)}</size>", new)
    new = re.sub(r'\s*<open-checksum type="\w+">\w+</open-checksum>', "", new)
    new = re.sub(r"\s*<open-size>\d+</open-size>", "", new)
    if open_size is not None:
        new = new.replace("</data>", f"  <open-size>{open_size}</open-size>\n  </data>")
    if open_sha256 is not None:
        new = new.replace("</data>", f'  <open-checksum type="sha256">{open_sha256}'
                                     "</open-checksum>\n  </data>")
    (repo / REPOMD).write_text(text[:block.start()] + new + text[block.end():])


def edit_primary(repo: Path, edit: Callable[[str], str]) -> None:
    """Rewrite primary.xml's text (gz) and repomd.xml to match; the caller re-signs or not."""
    path = metadata_path(repo)
    before = gzip.decompress(path.read_bytes()).decode()
    after = edit(before)
    assert after != before, "the edit changed nothing"
    plain = after.encode()
    set_metadata(repo, "primary", gzip.compress(plain), open_size=len(plain),
                 open_sha256=hashlib.sha256(plain).hexdigest())


def package_block(primary: str, name: str, version: str) -> re.Match[str]:
    match = re.search(rf'<package type="rpm">\s*<name>{re.escape(name)}</name>(?:(?!</package>).)*?'
                      rf'ver="{re.escape(version)}".*?</package>', primary, re.DOTALL)
    assert match is not None, f"primary.xml has no {name}-{version}"
    return match


def edit_package(primary: str, name: str, version: str, edit: Callable[[str], str]) -> str:
    block = package_block(primary, name, version)
    return primary[:block.start()] + edit(block.group(0)) + primary[block.end():]


def set_timestamp(repo: Path, when: int) -> None:
    text = (repo / REPOMD).read_text()
    text = re.sub(r"<timestamp>\d+</timestamp>", f"<timestamp>{when}</timestamp>", text)
    text = re.sub(r"<revision>\d+</revision>", f"<revision>{when}</revision>", text)
    (repo / REPOMD).write_text(text)


def resign(repo: Path, key: SigningKey) -> None:
    sign_detached(repo / REPOMD, key)


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under `root` (not following symlinks) with its type and content digest."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = os.fspath(path.relative_to(root))
            info = path.lstat()
            if path.is_symlink():
                found[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                found[rel] = f"{oct(info.st_mode)}:" + hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[rel] = f"dir:{oct(info.st_mode)}"
    return found


@dataclass(frozen=True)
class Published:
    """What an output publishes: latest per image, version directories, pool files."""

    latest: dict[str, str | None]
    versions: dict[str, list[str]]
    pool: frozenset[str]

    @classmethod
    def of(cls, output: Path) -> Published:
        store = ImageStore(output)
        names = store.names()
        return cls({n: store.latest(n) for n in names}, {n: store.versions(n) for n in names},
                   frozenset(store.pool.entries()))


def assert_unchanged(output: Path, before: Published) -> None:
    after = Published.of(output)
    assert after == before, f"the output changed: {before} -> {after}"
    store = ImageStore(output)
    assert set(store.pool.entries()) <= store.referenced(), "an unreferenced pool entry"
    image_dirs = output / "images"
    if image_dirs.is_dir():
        leftovers = [p for p in image_dirs.glob("*/.tmp-*")]
        assert not leftovers, f"staging left behind: {leftovers}"


def run_rpmimg(*args: str | Path, umask: int | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m rpmimg ARGS` in a child process (its own memory, exit code and stderr)."""
    def child() -> None:
        if umask is not None:
            os.umask(umask)
    return subprocess.run([sys.executable, "-m", "rpmimg", *map(os.fspath, args)],
                          capture_output=True, text=True, timeout=timeout, preexec_fn=child,
                          check=False)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single `rpmimg: error:` line of a failed run (asserting there is exactly one)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("rpmimg:")]
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert len(errors) == 1 and errors[0].startswith("rpmimg: error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return errors[0].removeprefix("rpmimg: error: ")



@dataclass(frozen=True)
class World:
    rpms: Path  # every fixture package, signed by repo_key
    repo_key: SigningKey
    thief_key: SigningKey  # what an attacker signs with
    sign_key: SigningKey  # signs manifests


def make_world(root: Path) -> World:
    """The fixture packages (libz, tool 1.0 and 2.0 needing libz, fakessl, richapp needing
    libz or fakessl) and the keys."""
    repo_key = generate_key(root / "repo-key")
    thief = generate_key(root / "thief-key")
    specs = [
        package("libz", "1.0", files=("/usr/lib/libz.txt",)),
        package("tool", "1.0", requires=("libz",), files=("/usr/bin/tool",)),
        package("tool", "2.0", requires=("libz",), files=("/usr/bin/tool",)),
        package("fakessl", "1.0", files=("/usr/lib/fakessl.txt",)),
        package("richapp", "1.0", requires=("(libz or fakessl)",), files=("/usr/bin/richapp",)),
    ]
    for spec in specs:
        add_package(spec, root / "all", repo_key)
    return World(root / "all" / "Packages", repo_key, thief, generate_key(root / "sign-key"))


def make_repo(world: World, where: Path, files: Sequence[str], *,
              key: SigningKey | None = None) -> Path:
    """A repository of some fixture packages (by file name prefix), signed by `key`."""
    shutil.rmtree(where, ignore_errors=True)
    (where / "Packages").mkdir(parents=True)
    for rpm in world.rpms.iterdir():
        if any(rpm.name.startswith(f) for f in files):
            shutil.copy(rpm, where / "Packages")
    createrepo(where, key=key)
    return where


def write_definition(path: Path, url: str, packages: Sequence[str], *, gpgkey: str | None = None,
                     extra: str = "", top: str = "") -> Path:
    text = (f'name = "demo"\narch = "x86_64"\npackages = {list(packages)!r}\n{top}'
            f'[[repo]]\nname = "main"\nurl = "{url}"\n').replace("'", '"')
    if gpgkey is not None:
        text += f'gpgkey = "{gpgkey}"\n'
    path.write_text(text + extra)
    return path


@dataclass
class Scene:
    """An output with one published version, a definition and a decoy to watch."""

    world: World
    tmp: Path
    repo: Path
    out: Path
    decoy: Path
    decoy_before: dict[str, str]

    def definition(self, url: str, packages: Sequence[str] = ("tool",), *,
                   gpgkey: str | None = "repo", extra: str = "", top: str = "") -> Path:
        """A definition file; gpgkey "repo" (the default) is the repository key's file."""
        key = os.fspath(self.world.repo_key.public) if gpgkey == "repo" else gpgkey
        return write_definition(self.tmp / "demo.toml", url, packages, gpgkey=key, extra=extra,
                                top=top)

    def compose(self, definition: Path, *args: str) -> str:
        """Run a compose that must fail; returns its one error line after checking the rules."""
        before = Published.of(self.out)
        result = run_rpmimg("compose", definition, "-o", self.out, "--sign-key",
                            self.world.sign_key.secret, *args)
        line = one_error_line(result)
        assert_unchanged(self.out, before)
        assert tree_digest(self.decoy) == self.decoy_before, "the decoy outside OUTPUT changed"
        return line

    def publish(self, definition: Path, *args: str) -> str:
        result = run_rpmimg("compose", definition, "-o", self.out, "--sign-key",
                            self.world.sign_key.secret, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout


def make_scene(world: World, tmp_path: Path) -> Scene:
    """A signed repository of libz and tool 2.0, an output to come and a decoy beside it."""
    decoy = tmp_path / "decoy"
    (decoy / "ssh").mkdir(parents=True)
    (decoy / "ssh" / "sshd_config").write_text("PermitRootLogin no\n")
    (decoy / "shadow").write_text("root:secret-hash:19000::::::\n")
    repo = make_repo(world, tmp_path / "repo", ["libz", "tool-2.0"], key=world.repo_key)
    return Scene(world, tmp_path, repo, tmp_path / "out", decoy, tree_digest(decoy))




# What the hostile-mirror tests run: packages built for real, real createrepo_c metadata,
# real signatures.
REPO_TOOLS = ("rpmbuild", "createrepo_c", "gpg", "gpgv", "gpgconf")
needs_repo_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in REPO_TOOLS), reason=f"needs {', '.join(REPO_TOOLS)}"
)



def flip_byte(path: Path, offset: int) -> None:
    """Invert the byte at offset of path in place (a read-only file made writable for it,
    its mode put back after)."""
    mode = path.stat().st_mode
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    path.chmod(mode)
