"""Compose end to end: fixture repositories in, a signed static image directory out."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard
from jsonschemas import validate

from fixtures.build import SigningKey
from fixtures.httpd import Faults, serve
from fixtures.outputs import assert_consistent
from fixtures.repos import add_package, createrepo, package, solver_universe
from fixtures.signing import generate_key
from imagespec.manifest import ImageManifest, parse
from rpmextents import ExtentsPackage
from rpmextents.seekable import read_table
from rpmimg.cli import main
from solver.compose import compose
from solver.definition import ImageDefinition, RepoSource
from solver.errors import ComposeFetchError, DepsolveError, RepoError
from solver.fetch import Fetcher
from solver.publish import ImageStore

pytestmark = pytest.mark.skipif(
    shutil.which("rpmbuild") is None or shutil.which("createrepo_c") is None
    or shutil.which("gpg") is None,
    reason="needs rpmbuild, createrepo_c and gpg",
)

PACKAGES = ("app", "scripted")


@dataclass(frozen=True)
class World:
    repo: Path  # a signed repository (never modified; tests copy it)
    repo_key: SigningKey
    other_key: SigningKey
    manifest_key: SigningKey


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("compose-world")
    repo_key = generate_key(root / "repo-key")
    other = generate_key(root / "other-key")
    manifest_key = generate_key(root / "manifest-key")
    repo = root / "repo"
    for p in solver_universe():
        add_package(p, repo, repo_key)
    createrepo(repo, key=repo_key)
    return World(repo, repo_key, other, manifest_key)


def definition(url: str, *, gpgkey: Path | None = None, packages: tuple[str, ...] = PACKAGES,
               name: str = "demo") -> ImageDefinition:
    return ImageDefinition(name=name, arch="x86_64", packages=packages,
                           repos=(RepoSource("main", url, os.fspath(gpgkey) if gpgkey else None),))


def repo_copy(world: World, tmp_path: Path) -> Path:
    target = tmp_path / "repo"
    shutil.copytree(world.repo, target)
    return target


def url_of(path: Path) -> str:
    return path.as_uri() + "/"


def test_compose_publishes_a_signed_static_image(world: World, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = compose(definition(url_of(world.repo), gpgkey=world.repo_key.public), out,
                     sign_key=world.manifest_key.secret)
    assert result.changed and result.version and result.manifest
    version_dir = out / "images" / "demo" / result.version
    assert os.readlink(out / "images" / "demo" / "latest") == result.version
    raw = json.loads((version_dir / "manifest.json").read_bytes())
    assert raw["format"] == 1 and raw["name"] == "demo" and raw["arch"] == "x86_64"
    assert raw["block_size"] == 4096 and len(raw["inputs_sha256"]) == 64
    names = {p["name"] for p in raw["packages"]}
    assert {"app", "libfoo", "glibc", "bash", "filesystem", "app-data", "scripted"} <= names
    originals = {p.name: p for p in (world.repo / "Packages").iterdir()}
    for p in raw["packages"]:
        pool_file = (version_dir / p["location"]).resolve()
        assert pool_file.parent.parent == (out / "pool").resolve()
        assert pool_file.name.startswith(p["sha256"])
        data = pool_file.read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (p["sha256"], p["size"])
        with ExtentsPackage.open(pool_file) as pkg:
            assert pkg.name == p["name"] and pkg.version == p["version"]
            assert hashlib.sha256(pkg.header_bytes()).hexdigest() == p["header_sha256"]
        original = originals[f"{p['name']}-{p['version']}-{p['release']}.{p['arch']}.rpm"]
        source = original.read_bytes()
        assert p["source_checksum"] == "sha256:" + hashlib.sha256(source).hexdigest()
        assert p["source_size"] == len(source)
        # The header region is the original's, byte for byte.
        assert data[:len(pkg.header_bytes())] == source[:len(pkg.header_bytes())]
        zst = (version_dir / p["zstd"]["location"]).read_bytes()
        assert hashlib.sha256(zst).hexdigest() == p["zstd"]["sha256"]
        # An HTTP client downloads no more than the original compressed RPM.
        assert len(zst) == p["zstd"]["size"] <= p["source_size"]
        # The zstd copy is one zstd stream of the package.
        assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(zst)).read(len(data) + 1) == data
        # The seekable form: one zstd stream of frames too, with its table pinned.
        seek = (version_dir / p["seekable"]["location"]).read_bytes()
        assert (hashlib.sha256(seek).hexdigest(), len(seek)) == (
            p["seekable"]["sha256"], p["seekable"]["size"])
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(seek), read_across_frames=True)
        assert reader.read(len(data) + 1) == data
        table, table_bytes = read_table(io.BytesIO(seek), len(data))
        assert table.size == len(data)
        assert (len(table_bytes), hashlib.sha256(table_bytes).hexdigest()) == (
            p["seekable"]["table_size"], p["seekable"]["table_sha256"])
    report = raw["report"]
    assert report["scriptlets"] == ["scripted-1.0-1.noarch"]
    assert report["triggers"] == []
    assert report["outside_usr"] == {"bash-5.2-1.x86_64": ["/bin/sh"],
                                     "scripted-1.0-1.noarch": ["/etc/scripted.conf"]}
    # The detached signature verifies with the public key, and fails on a changed manifest.
    keyring = tmp_path / "pub.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--dearmor"], input=world.manifest_key.public.read_bytes(),
                                       capture_output=True, check=True).stdout)
    gpgv = ["gpgv", "--keyring", os.fspath(keyring), os.fspath(version_dir / "manifest.json.asc")]
    subprocess.run([*gpgv, os.fspath(version_dir / "manifest.json")], check=True, capture_output=True)
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes((version_dir / "manifest.json").read_bytes().replace(b'"demo"', b'"dem0"'))
    assert subprocess.run([*gpgv, os.fspath(tampered)], capture_output=True).returncode != 0
    assert not (out / ".cache" / "packages").exists()  # originals are not kept
    assert_consistent(out)


def test_unchanged_inputs_publish_nothing(world: World, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    d = definition(url_of(world.repo))
    first = compose(d, out)
    second = compose(d, out)
    assert not second.changed and second.version == first.version
    assert ImageStore(out).versions("demo") == [first.version]
    toml = tmp_path / "demo.toml"
    toml.write_text(f'name = "demo"\narch = "x86_64"\npackages = {json.dumps(list(PACKAGES))}\n'
                    f'[[repo]]\nname = "main"\nurl = "{url_of(world.repo)}"\n')
    capsys.readouterr()
    assert main(["compose", os.fspath(toml), "-o", os.fspath(out)]) == 0
    assert capsys.readouterr().out == f"demo: no change (latest is {first.version})\n"
    assert main(["compose", os.fspath(toml), "-o", os.fspath(out), "--json"]) == 0
    answer = validate(["compose"], capsys.readouterr().out)
    assert answer["changed"] is False and answer["version"] == first.version
    assert ImageStore(out).versions("demo") == [first.version]


def test_new_package_version_publishes_a_diff(world: World, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    repo = repo_copy(world, tmp_path)
    out = tmp_path / "out"
    d = definition(url_of(repo), gpgkey=world.repo_key.public)
    first = compose(d, out)
    add_package(package("libfoo", "1.1", "x86_64", requires=("libc.so.6()(64bit)",),
                        provides=("libfoo.so.1()(64bit)",), files=("/usr/lib64/libfoo.so.2",)),
                repo, world.repo_key)
    (repo / "Packages" / "scripted-1.0-1.noarch.rpm").unlink()
    createrepo(repo, key=world.repo_key)
    second = compose(definition(url_of(repo), gpgkey=world.repo_key.public,
                                packages=("app", "oldnet")), out)
    assert second.changed and second.previous == first.version
    assert second.version == first.version.replace(".1", ".2")
    assert second.fetched == 2 and second.reused == second.packages - 2  # libfoo and oldnet only
    diff = second.diff
    assert diff is not None
    assert [(c.kind, c.name, c.old, c.new) for c in diff.changes] == [
        ("upgraded", "libfoo", "1.0-1", "1.1-1"),
        ("added", "oldnet", None, "1.0-1"),
        ("removed", "scripted", "1.0-1", None),
    ]
    changes = json.loads((out / "images/demo" / second.version / "changes.json").read_text())
    assert (changes["old"], changes["new"]) == (first.version, second.version)
    assert changes["changes"][0] == {"kind": "upgraded", "name": "libfoo", "arch": "x86_64",
                                     "old": "1.0-1", "new": "1.1-1"}
    capsys.readouterr()
    assert main(["image", "diff", os.fspath(out), "demo", first.version, second.version]) == 0
    text = capsys.readouterr().out
    assert "upgraded   libfoo.x86_64 1.0-1 -> 1.1-1" in text
    assert "removed    scripted.noarch 1.0-1" in text and "added      oldnet.noarch 1.0-1" in text
    assert main(["image", "diff", os.fspath(out), "demo", second.version, first.version,
                 "--json"]) == 0
    back = validate(["image", "diff"], capsys.readouterr().out)
    assert (back["old"]["version"], back["new"]["version"]) == (second.version, first.version)
    assert back["changes"][0] == {"kind": "downgraded", "name": "libfoo", "arch": "x86_64",
                                  "old": "1.1-1", "new": "1.0-1"}
    assert main(["image", "list", os.fspath(out), "--json"]) == 0
    listing = validate(["image", "list"], capsys.readouterr().out)
    images = listing["images"]
    assert [v["version"] for v in images[0]["versions"]] == [first.version, second.version]
    assert images[0]["latest"] == second.version
    assert_consistent(out)


def _pool_files(store: ImageStore, name: str, version: str) -> set[str]:
    """Output-relative pool paths (extents RPMs and zstd copies) a published version uses."""
    files = set()
    for p in store.manifest(name, version).packages:
        assert p.zstd is not None and p.seekable is not None
        for location in (p.location, p.zstd.location, p.seekable.location):
            files.add(os.path.normpath(os.path.join("images", name, version, location)))
    return files


def test_keep_prunes_versions_and_unreferenced_pool_entries(world: World, tmp_path: Path) -> None:
    out = tmp_path / "out"
    url = url_of(world.repo)
    store = ImageStore(out)
    # v1 alone needs the i686 packages (legacy-tool, libfoo.i686, glibc.i686).
    v1 = compose(definition(url, packages=("app", "legacy-tool")), out)
    other = compose(definition(url, packages=("sendmail",), name="other"), out)
    v2 = compose(definition(url, packages=("app", "scripted")), out)
    assert v1.version and v2.version and other.version
    v1_files = _pool_files(store, "demo", v1.version)
    v3 = compose(definition(url, packages=("bash",)), out, keep=2)
    assert v3.pruned_versions == (v1.version,) and v3.version
    assert store.versions("demo") == [v2.version, v3.version]
    assert store.versions("other") == [other.version]  # another image is never touched
    kept = (_pool_files(store, "demo", v2.version) | _pool_files(store, "demo", v3.version)
            | _pool_files(store, "other", other.version))
    on_disk = set(store.pool.entries())
    assert on_disk == kept == store.referenced()
    # What only the pruned version used is gone from the pool, and reported as pruned.
    pruned = v1_files - kept
    assert {os.path.basename(f).split("-", 1)[1] for f in pruned if f.endswith(".rpm")} == {
        "legacy-tool-1.0-1.i686.rpm", "libfoo-1.0-1.i686.rpm", "glibc-2.36-1.i686.rpm"}
    assert set(v3.pruned_pool) == pruned and not pruned & on_disk
    compose(definition(url, packages=("bash",)), out, keep=1)
    assert store.versions("demo") == [v3.version]
    assert_consistent(out)


def test_unsatisfiable_definition_publishes_nothing(world: World, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with pytest.raises(DepsolveError, match="nothing provides libmissing"):
        compose(definition(url_of(world.repo), packages=("app", "broken")), out)
    assert ImageStore(out).names() == []
    toml = tmp_path / "broken.toml"
    toml.write_text(f'name = "demo"\narch = "x86_64"\npackages = ["broken"]\n'
                    f'[[repo]]\nname = "main"\nurl = "{url_of(world.repo)}"\n')
    assert main(["compose", os.fspath(toml), "-o", os.fspath(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("rpmimg: error: cannot solve: nothing provides libmissing.so.2()(64bit) "
                       "needed by broken-1.0-1.x86_64")
    assert not any(line.startswith("rpmimg: error") for line in err[:-1])


def test_repository_key_mismatch_is_refused(world: World, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Metadata signed by another key than the definition's is refused before any package.
    with serve(world.repo) as web, pytest.raises(RepoError, match="repomd.xml: signed by key [0-9A-F]+, which is not a trusted"):
        compose(definition(web.url, gpgkey=world.other_key.public), out)
    # Metadata signed by the right key does not vouch for packages signed by another.
    repo = repo_copy(world, tmp_path)
    createrepo(repo, key=world.other_key)
    with serve(repo) as web, pytest.raises(ComposeFetchError, match="signed with a key that is not"):
        compose(definition(web.url, gpgkey=world.other_key.public), out)
    assert ImageStore(out).names() == [] and list(ImageStore(out).pool.entries()) == []


def test_unsigned_package_is_refused_when_the_repo_has_a_key(world: World, tmp_path: Path) -> None:
    repo = repo_copy(world, tmp_path)
    add_package(package("unsigned-tool", files=("/usr/bin/unsigned-tool",)), repo)
    createrepo(repo, key=world.repo_key)
    with pytest.raises(ComposeFetchError, match="^unsigned-tool-1.0-1.noarch: package is not signed"):
        compose(definition(url_of(repo), gpgkey=world.repo_key.public,
                           packages=("unsigned-tool",)), tmp_path / "out")


def test_http_checksum_mismatch_names_package_and_publishes_nothing(world: World,
                                                                   tmp_path: Path) -> None:
    repo = repo_copy(world, tmp_path)
    out = tmp_path / "out"
    victim = repo / "Packages" / "libfoo-1.0-1.x86_64.rpm"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    with serve(repo) as web, pytest.raises(ComposeFetchError) as e:
        compose(definition(web.url, gpgkey=world.repo_key.public), out,
                fetcher=Fetcher(backoff=0.01))
    assert str(e.value).startswith("libfoo-1.0-1.x86_64: checksum mismatch")
    assert ImageStore(out).names() == [] and list(ImageStore(out).pool.entries()) == []


def test_http_download_cut_midway_resumes(world: World, tmp_path: Path) -> None:
    repo = repo_copy(world, tmp_path)
    path = "/Packages/glibc-2.36-1.x86_64.rpm"
    faults = Faults(drop_after={path: 2000})
    with serve(repo, faults) as web:
        result = compose(definition(web.url, gpgkey=world.repo_key.public), tmp_path / "out",
                         fetcher=Fetcher(backoff=0.01))
    assert result.changed
    ranges = [r for p, r in web.requests if p == path]
    assert ranges == [None, "bytes=2000-"]
    assert_consistent(tmp_path / "out")


def test_http_remote_key_and_metadata(world: World, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(world.repo, site / "repo")
    shutil.copy(world.repo_key.public, site / "key.asc")
    with serve(site) as web:
        d = ImageDefinition("demo", "x86_64", PACKAGES,
                            (RepoSource("main", web.url + "repo/", web.url + "key.asc",
                                        gpgkey_fingerprint=(world.repo_key.fingerprint,)),))
        first = compose(d, tmp_path / "out")
        again = compose(d, tmp_path / "out")
    assert first.changed and not again.changed
    assert any(p == "/key.asc" for p, _ in web.requests)


def test_the_manifest_compose_writes_parses_into_the_same_value(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract's round trip: what compose publishes is what the client's parser reads."""
    written: list[ImageManifest] = []
    publish = ImageStore.publish

    def recording(self: ImageStore, manifest: ImageManifest, *args: Any) -> Path:
        written.append(manifest)
        return publish(self, manifest, *args)

    monkeypatch.setattr(ImageStore, "publish", recording)
    result = compose(definition(url_of(world.repo), gpgkey=world.repo_key.public), tmp_path / "out",
                     sign_key=world.manifest_key.secret)
    assert result.manifest is not None and len(written) == 1
    data = result.manifest.read_bytes()
    parsed = parse(data, "manifest.json")
    assert parsed == written[0]
    assert parsed.dumps() == data  # and writing the parsed value gives the same bytes
    assert {p.nevra for p in parsed.packages} >= {"app-1.0-1.x86_64"}
    assert all(p.zstd is not None for p in parsed.packages)
