"""The output directory's rules: version numbering, the lock, signing keys, leftovers."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fixtures.repos import build_repo, createrepo, solver_universe
from fixtures.signing import generate_key
from rpmextents.nevra import vercmp
from rpmimg.cli import main
from solver.compose import compose
from solver.definition import ImageDefinition, RepoSource
from solver.errors import ComposeFetchError, PublishError, RepoError
from solver.keys import RepoKeyring
from solver.pool import PackagePool
from solver.publish import ImageStore
from solver.signing import sign_detached

NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("rpmbuild") is None or shutil.which("createrepo_c") is None:
        pytest.skip("needs rpmbuild and createrepo_c")
    wanted = {"filesystem", "bash", "glibc", "sendmail"}
    root = tmp_path_factory.mktemp("store-repo")
    return build_repo([p for p in solver_universe() if p.name in wanted], root / "repo")


def definition(repo: Path, *packages: str) -> ImageDefinition:
    return ImageDefinition("demo", "x86_64", packages, (RepoSource("main", repo.as_uri() + "/"),))


def test_versions_count_per_day_and_order_like_rpm(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    versions = []
    for i, pkgs in enumerate([("bash",), ("glibc",), ("bash", "glibc")] * 4):
        when = NOON if i < 11 else datetime(2026, 11, 23, 1, tzinfo=UTC)
        result = compose(definition(repo, *pkgs), out, now=when)
        versions.append(result.version)
    assert versions[:11] == [f"20261122.{n}" for n in range(1, 12)]
    assert versions[11] == "20261123.1"
    store = ImageStore(out)
    # 20261122.10 sorts after 20261122.9, as rpm compares versions.
    assert store.versions("demo") == versions
    assert vercmp("20261122.10", "20261122.9") == 1
    assert store.latest("demo") == "20261123.1"


def test_clock_going_backwards_is_refused(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    compose(definition(repo, "bash"), out, now=NOON)
    with pytest.raises(PublishError, match="is the clock right"):
        compose(definition(repo, "glibc"), out, now=datetime(2026, 11, 21, tzinfo=UTC))
    assert ImageStore(out).versions("demo") == ["20261122.1"]


def test_one_compose_at_a_time(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = ImageStore(out)
    with store.locked(), pytest.raises(PublishError, match="another compose is writing"):
        compose(definition(repo, "bash"), out)
    compose(definition(repo, "bash"), out)  # free again once the holder is done


def test_leftovers_of_a_killed_run_are_removed(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = compose(definition(repo, "bash"), out, now=NOON)
    image = out / "images" / "demo"
    (image / ".tmp-20261122.2-999").mkdir()
    (image / ".tmp-20261122.2-999" / "manifest.json").write_text("{half")
    os.symlink("20261122.2", image / ".tmp-latest-999")
    (out / "pool" / ".tmp" / "x").mkdir(parents=True)
    assert ImageStore(out).versions("demo") == [first.version]  # dot-names are invisible
    second = compose(definition(repo, "glibc"), out, now=NOON)
    assert second.version == "20261122.2"
    assert sorted(p.name for p in image.iterdir()) == ["20261122.1", "20261122.2", "latest"]
    assert not (out / "pool" / ".tmp").exists()


def test_prune_keeps_latest_even_when_older(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    compose(definition(repo, "bash"), out, now=NOON)
    compose(definition(repo, "glibc"), out, now=NOON)
    image = out / "images" / "demo"
    # An operator pinned latest back to the first version by hand.
    os.symlink("20261122.1", image / "pinned")
    os.replace(image / "pinned", image / "latest")
    store = ImageStore(out)
    assert store.prune("demo", 1) == []
    assert store.versions("demo") == ["20261122.1", "20261122.2"]


def test_bad_keep_is_a_usage_error(repo: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "d.toml"
    toml.write_text(f'name = "demo"\narch = "x86_64"\npackages = ["bash"]\n'
                    f'[[repo]]\nname = "main"\nurl = "{repo.as_uri()}/"\n')
    assert main(["compose", os.fspath(toml), "-o", os.fspath(tmp_path / "out"), "--keep", "0"]) == 1
    assert capsys.readouterr().err == "rpmimg: error: --keep must be at least 1, not 0\n"
    assert not (tmp_path / "out").exists()


def test_definition_error_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "d.toml"
    toml.write_text('name = "demo"\narch = "x86_64"\npakages = ["bash"]\n')
    assert main(["compose", os.fspath(toml), "-o", os.fspath(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"rpmimg: error: {toml}:3: unknown key 'pakages'")


def test_image_commands_on_a_missing_output(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "list", os.fspath(tmp_path)]) == 1
    assert "not a compose output" in capsys.readouterr().err
    assert main(["image", "diff", os.fspath(tmp_path), "demo", "1", "2"]) == 1
    assert "image 'demo' has no version '1'" in capsys.readouterr().err


def test_sign_key_problems_are_clear(tmp_path: Path) -> None:
    data = tmp_path / "manifest.json"
    data.write_text("{}\n")
    with pytest.raises(PublishError, match="the key file does not exist"):
        sign_detached(tmp_path / "nope.asc", data, tmp_path / "sig")
    key = generate_key(tmp_path / "k")
    with pytest.raises(PublishError, match="holds no secret key"):
        sign_detached(key.public, data, tmp_path / "sig")
    sign_detached(key.secret, data, tmp_path / "sig")
    assert (tmp_path / "sig").read_text().startswith("-----BEGIN PGP SIGNATURE-----")


def test_pool_entries_are_never_rewritten(repo: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "out")
    with store.locked():
        _pool_entries_are_never_rewritten(repo, tmp_path, store.pool)


def _pool_entries_are_never_rewritten(repo: Path, tmp_path: Path, pool: PackagePool) -> None:
    original = next((repo / "Packages").glob("bash-*.rpm"))
    first = pool.add(original, "bash", block_size=4096)
    path = tmp_path / "out" / first.relpath
    before = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (path, Path(f"{path}.zst"), Path(f"{path}.seek.zst"))]
    second = pool.add(original, "bash", block_size=4096)
    assert second == first
    after = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in (path, Path(f"{path}.zst"), Path(f"{path}.seek.zst"))]
    assert after == before
    assert sorted(pool.entries()) == sorted([first.relpath, first.zstd_relpath, first.seekable_relpath])
    bigger = pool.add(original, "bash", block_size=8192)
    assert bigger.sha256 != first.sha256 and bigger.block_size == 8192


def test_corrupt_original_fails_naming_it(repo: Path, tmp_path: Path) -> None:
    # The repository indexes the damaged file, so only the payload digests can tell.
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    victim = copy / "Packages" / "glibc-2.36-1.x86_64.rpm"
    data = bytearray(victim.read_bytes())
    data[-40] ^= 0x55
    victim.write_bytes(bytes(data))
    createrepo(copy)
    with pytest.raises(ComposeFetchError, match="^glibc-2.36-1.x86_64: cannot transcode"):
        compose(definition(copy, "glibc"), tmp_path / "out")
    assert ImageStore(tmp_path / "out").names() == []


def test_missing_sign_key_fails_before_any_work(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="signing key .* does not exist"):
        compose(definition(repo, "bash"), tmp_path / "out", sign_key=tmp_path / "nope.asc")
    assert not (tmp_path / "out").exists()


def test_repo_key_file_must_hold_a_key(tmp_path: Path) -> None:
    junk = tmp_path / "junk.asc"
    junk.write_text("not a key\n")
    with pytest.raises(RepoError, match="not an OpenPGP public key"):
        RepoKeyring.from_file(junk, "repository 'main' key")
    with pytest.raises(RepoError, match="cannot read .*missing.asc"):
        RepoKeyring.from_file(tmp_path / "missing.asc", "repository 'main' key")
