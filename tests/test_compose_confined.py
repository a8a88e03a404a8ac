"""Compose stays inside its output and inside file:// repositories; small hostile inputs are one-line errors.

A local user who can plant symlinks in OUTPUT, or write a file:// repository's
metadata, must not make compose write, prune or read anything elsewhere: each case
plants the link or the location, and checks the refusal, the message and a decoy
directory beside OUTPUT hashed before and after.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hostile import (
    REPOMD,
    Published,
    Scene,
    edit_package,
    edit_primary,
    make_repo,
    needs_repo_tools,
    one_error_line,
    resign,
    run_rpmimg,
    tree_digest,
)

from fixtures.httpd import serve
from solver.compose import compose
from solver.definition import load_definition
from solver.errors import PublishError
from solver.publish import ImageStore

pytestmark = needs_repo_tools


def _plant(scene: Scene, where: str) -> Path:
    """Replace OUTPUT/`where` (moved aside if there) by a symlink to the decoy."""
    target = scene.out / where
    if target.exists() or target.is_symlink():
        target.rename(target.with_name(target.name + ".real"))
    link_to = scene.decoy / "shadow" if where == ".lock" else scene.decoy
    target.symlink_to(link_to)
    return target


@pytest.mark.parametrize("where", ["pool", "pool/XX", "images/demo", ".cache", ".lock"])
def test_planted_symlinks_are_refused_not_followed(scene: Scene, where: str) -> None:
    url = scene.repo.as_uri() + "/"
    scene.publish(scene.definition(url, ("libz",)))
    if where == "pool/XX":
        where = "pool/" + next(p.name for p in (scene.out / "pool").iterdir()
                               if not p.name.startswith("."))
    latest = os.readlink(scene.out / "images/demo/latest") if where != "images/demo" else None
    link = _plant(scene, where)
    # A new version (writes) and --keep 1 (pruning) would both touch the link's target.
    result = run_rpmimg("compose", scene.definition(url, ("tool",)), "-o", scene.out,
                        "--keep", "1")
    assert one_error_line(result) == (f"{link}: a symlink where compose expects its own file "
                                      "or directory; refusing to follow it")
    assert tree_digest(scene.decoy) == scene.decoy_before
    if latest is not None:
        assert os.readlink(scene.out / "images/demo/latest") == latest


@pytest.mark.parametrize("href", ["../decoy/shadow", "/DECOY/shadow", "Packages/../../decoy/shadow"])
def test_file_repository_locations_stay_inside(scene: Scene, href: str) -> None:
    href = href.replace("/DECOY", os.fspath(scene.decoy))
    edit_primary(scene.repo, lambda text: edit_package(
        text, "tool", "2.0", lambda block: re.sub(r'<location href="[^"]+"/>',
                                                  f'<location href="{href}"/>', block)))
    line = scene.compose(scene.definition(scene.repo.as_uri() + "/", gpgkey=None))
    assert line == f"repository 'main': location {href!r} leaves the repository"
    secret = hashlib.sha256((scene.decoy / "shadow").read_bytes()).hexdigest()
    assert secret not in line


@pytest.mark.parametrize("href", ["//127.0.0.1:1/tool.rpm", "http://other.invalid/tool.rpm"])
def test_http_locations_stay_under_the_base_url(scene: Scene, href: str) -> None:
    edit_primary(scene.repo, lambda text: edit_package(
        text, "tool", "2.0", lambda block: re.sub(r'<location href="[^"]+"/>',
                                                  f'<location href="{href}"/>', block)))
    resign(scene.repo, scene.world.repo_key)
    with serve(scene.repo) as web:
        line = scene.compose(scene.definition(web.url))
    assert line == f"repository 'main': location {href!r} leaves the repository"
    assert all(path != "/tool.rpm" for path, _ in web.requests)


def test_symlink_out_of_a_file_repository_is_refused(scene: Scene) -> None:
    victim = scene.repo / "Packages" / "tool-2.0-1.noarch.rpm"
    victim.unlink()
    victim.symlink_to(scene.decoy / "shadow")
    line = scene.compose(scene.definition(scene.repo.as_uri() + "/", gpgkey=None))
    assert line == ("repository 'main': 'Packages/tool-2.0-1.noarch.rpm' is a symlink leading "
                    "out of the repository")


def test_published_modes_ignore_the_umask(scene: Scene) -> None:
    result = run_rpmimg("compose", scene.definition(scene.repo.as_uri() + "/"), "-o", scene.out,
                        "--sign-key", scene.world.sign_key.secret, umask=0o077)
    assert result.returncode == 0, result.stderr
    published = [scene.out, *(scene.out / "pool").rglob("*"), *(scene.out / "images").rglob("*"),
                 scene.out / "pool", scene.out / "images"]
    modes = {os.fspath(p.relative_to(scene.out)): stat.S_IMODE(p.lstat().st_mode)
             for p in published if not p.is_symlink()}
    assert any(name.endswith("manifest.json.asc") for name in modes)
    wrong = {n: oct(m) for n, m in modes.items()
             if m != (0o755 if (scene.out / n).is_dir() else 0o644)}
    assert not wrong


def test_weak_checksums_need_the_definition_s_consent(scene: Scene) -> None:
    repo = make_repo(scene.world, scene.tmp / "sha1", ["libz", "tool-2.0"])
    subprocess.run(["createrepo_c", "-q", "--no-database", "--checksum", "sha1",
                    os.fspath(repo)], check=True, capture_output=True)
    resign(repo, scene.world.repo_key)
    line = scene.compose(scene.definition(repo.as_uri() + "/"))
    assert re.fullmatch(r"repository 'main': repomd.xml entry '\w+' has a weak sha1 checksum "
                        r"\(set allow_weak_checksums = true for this repository to accept it\)",
                        line)
    scene.publish(scene.definition(repo.as_uri() + "/", extra="allow_weak_checksums = true\n"))


def test_unknown_checksum_type_is_a_one_line_error(scene: Scene) -> None:
    repomd = scene.repo / REPOMD
    repomd.write_text(repomd.read_text().replace('<checksum type="sha256">',
                                                 '<checksum type="shake_128">', 1))
    line = scene.compose(scene.definition(scene.repo.as_uri() + "/", gpgkey=None))
    assert line == ("repository 'main': repomd.xml entry 'primary': unsupported checksum type "
                    "'shake_128'")


def test_deeply_nested_definition_is_a_one_line_error(scene: Scene) -> None:
    definition = scene.tmp / "deep.toml"
    definition.write_text('name = "demo"\nx = ' + "[" * 100000 + "]" * 100000 + "\n")
    line = scene.compose(definition)
    assert line == f"{definition}: invalid TOML: nested too deeply"


def test_key_file_that_never_ends_fails_fast(scene: Scene) -> None:
    line = scene.compose(scene.definition(scene.repo.as_uri() + "/", gpgkey="/dev/zero"))
    assert line == "repository 'main' key /dev/zero: /dev/zero is not a regular file"
    huge = scene.tmp / "huge.asc"
    with open(huge, "wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB that cost nothing to make
    line = scene.compose(scene.definition(scene.repo.as_uri() + "/", gpgkey=os.fspath(huge)))
    assert line == f"repository 'main' key {huge}: {huge} is larger than 1048576 bytes"


def test_a_failed_compose_leaves_no_new_pool_entry(scene: Scene) -> None:
    """A failure after transcoding (here: a clock gone backwards) takes its pool files back."""
    url = scene.repo.as_uri() + "/"
    day = datetime(2026, 11, 22, 12, tzinfo=UTC)
    compose(load_definition(scene.definition(url, ("libz",))), scene.out, now=day)
    before = Published.of(scene.out)
    with pytest.raises(PublishError, match="is the clock right"):
        compose(load_definition(scene.definition(url, ("tool",))), scene.out,
                now=day - timedelta(days=1))
    assert Published.of(scene.out) == before
    assert set(ImageStore(scene.out).pool.entries()) == ImageStore(scene.out).referenced()
