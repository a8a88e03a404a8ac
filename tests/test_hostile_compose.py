"""Compose against hostile mirrors: real rpmbuild packages, real createrepo_c metadata, tampered.

Each case is an attack from the compose-hardening issue. Mirrors are a real HTTP server
on 127.0.0.1 or real file:// repositories. Where the attack needs metadata that still
verifies (a mirror replaying old signed metadata, or a metadata signer that lies), the
tampered repomd.xml is re-signed with the repository key; an unsigned tamper is its own
case. Every refusal is checked for its exit code and one-line message, for publishing
nothing (latest, versions and pool as before, no unreferenced pool entry) and for
leaving a planted decoy directory outside OUTPUT byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time

from hostile import (
    Published,
    Scene,
    edit_package,
    edit_primary,
    make_repo,
    needs_repo_tools,
    resign,
    set_timestamp,
)

from fixtures.httpd import serve
from fixtures.repos import createrepo

pytestmark = needs_repo_tools

DAY = 86400


# --- Repository metadata is never authenticated -------------------------------------------


def test_replayed_old_metadata_is_refused(scene: Scene) -> None:
    """A mirror serving an older, correctly signed repomd (to bring back tool 1.0)."""
    w = scene.world
    old = make_repo(w, scene.tmp / "old", ["libz", "tool-1.0"], key=w.repo_key)
    set_timestamp(old, int(time.time()) - 30 * DAY)
    resign(old, w.repo_key)  # what the vendor signed a month ago
    set_timestamp(scene.repo, int(time.time()))
    resign(scene.repo, w.repo_key)
    site = scene.tmp / "mirror"
    shutil.copytree(scene.repo, site)
    with serve(site) as web:
        scene.publish(scene.definition(web.url))
        shutil.rmtree(site)
        shutil.copytree(old, site)  # the same URL now serves the old metadata
        line = scene.compose(scene.definition(web.url))
    assert line.startswith("repository 'main': metadata is older than already seen")


def test_downgrade_is_refused_unless_allowed(scene: Scene) -> None:
    """Newer signed metadata that lists only the older package: no silent downgrade."""
    w = scene.world
    with serve(scene.repo) as web:
        scene.publish(scene.definition(web.url))
    older = make_repo(w, scene.tmp / "older", ["libz", "tool-1.0"], key=w.repo_key)
    set_timestamp(older, int(time.time()) + 60)
    resign(older, w.repo_key)
    with serve(older) as web:
        line = scene.compose(scene.definition(web.url))
        assert line == ("tool.noarch: the solution downgrades it from 2.0-1 to 1.0-1; refusing "
                        '(allow it with allow_downgrade = ["tool"] or --allow-downgrade tool)')
        out = scene.publish(scene.definition(web.url), "--allow-downgrade", "tool")
        assert "downgraded tool.noarch 2.0-1 -> 1.0-1" in " ".join(out.split())
    allowed = make_repo(w, scene.tmp / "again", ["libz", "tool-2.0"], key=w.repo_key)
    set_timestamp(allowed, int(time.time()) + 120)
    resign(allowed, w.repo_key)
    with serve(allowed) as web:
        scene.publish(scene.definition(web.url))  # an upgrade again
    set_timestamp(older, int(time.time()) + 180)
    resign(older, w.repo_key)
    with serve(older) as web:
        scene.publish(scene.definition(web.url, top='allow_downgrade = ["tool"]\n'))


def test_frozen_mirror_is_reported(scene: Scene) -> None:
    set_timestamp(scene.repo, int(time.time()) - 10 * DAY)
    resign(scene.repo, scene.world.repo_key)
    with serve(scene.repo) as web:
        line = scene.compose(scene.definition(web.url, extra='max_metadata_age = "7d"\n'))
        assert line.startswith("repository 'main': metadata unchanged for 10.0d, longer than "
                               "max_metadata_age (7.0d)")
        scene.publish(scene.definition(web.url, extra='max_metadata_age = "11d"\n'))


def test_unsigned_tamper_is_refused(scene: Scene) -> None:
    edit_primary(scene.repo, lambda text: text.replace('<rpm:entry name="libz"/>', ""))
    with serve(scene.repo) as web:
        line = scene.compose(scene.definition(web.url))
    assert line == ("repository 'main' repomd.xml: BAD signature (the content was altered "
                    "after signing)")


def test_missing_signature_is_refused(scene: Scene) -> None:
    (scene.repo / "repodata" / "repomd.xml.asc").unlink()
    with serve(scene.repo) as web:
        line = scene.compose(scene.definition(web.url))
    assert line.startswith("repository 'main' repomd.xml.asc: ")
    assert "404" in line


def test_dependency_lie_is_refused(scene: Scene) -> None:
    """primary.xml drops tool's Requires: libz; the metadata signer lies (re-signed)."""
    edit_primary(scene.repo, lambda text: edit_package(
        text, "tool", "2.0", lambda block: block.replace('<rpm:entry name="libz"/>', "")))
    resign(scene.repo, scene.world.repo_key)
    with serve(scene.repo) as web:
        line = scene.compose(scene.definition(web.url))
    assert line == ("tool-2.0-1.noarch: its signed header requires libz, which no chosen package "
                    "provides; the repository metadata left it out")
    assert not Published.of(scene.out).pool


def test_rich_dependency_lie_is_refused(scene: Scene) -> None:
    """primary.xml drops richapp's `(libz or fakessl)`: libsolv checks it from the headers."""
    w = scene.world
    repo = make_repo(w, scene.tmp / "rich", ["richapp"])
    edit_primary(repo, lambda text: edit_package(
        text, "richapp", "1.0", lambda block: block.replace(
            '<rpm:entry name="(libz or fakessl)"/>', "")))
    resign(repo, w.repo_key)
    with serve(repo) as web:
        line = scene.compose(scene.definition(web.url, ("richapp",)))
    assert line.startswith("the signed headers disagree with the repository metadata: ")
    assert "nothing provides (libz or fakessl) needed by richapp-1.0-1.noarch" in line
    assert line.endswith("(the metadata left out a dependency)")


def test_fake_provides_is_refused(scene: Scene) -> None:
    """primary.xml says fakessl provides openssl: a job answered by the wrong package."""
    w = scene.world
    repo = make_repo(w, scene.tmp / "fake", ["fakessl"])
    edit_primary(repo, lambda text: edit_package(
        text, "fakessl", "1.0", lambda block: block.replace(
            "<rpm:provides>", '<rpm:provides>\n        <rpm:entry name="openssl"/>')))
    resign(repo, w.repo_key)
    with serve(repo) as web:
        line = scene.compose(scene.definition(web.url, ("openssl",)))
    assert line == ("the signed headers of the chosen packages provide no 'openssl'; the "
                    "repository metadata claims a Provides the packages do not have")


def test_epoch_lie_is_refused(scene: Scene) -> None:
    """An old package claiming epoch 99 would win over the honest newer one."""
    w = scene.world
    repo = make_repo(w, scene.tmp / "epoch", ["libz", "tool"])
    edit_primary(repo, lambda text: edit_package(
        text, "tool", "1.0", lambda block: block.replace('epoch="0" ver="1.0"',
                                                         'epoch="99" ver="1.0"')))
    resign(repo, w.repo_key)
    with serve(repo) as web:
        line = scene.compose(scene.definition(web.url))
    assert line == ("tool-99:1.0-1.noarch: the repository metadata lies about the epoch: the "
                    "signed header of tool-1.0-1.noarch.rpm is tool-1.0-1.noarch")


def test_nevra_lie_leaves_nothing_in_the_pool(scene: Scene) -> None:
    """The file at tool-2.0's location is tool-1.0 (checksums fixed, re-signed)."""
    w = scene.world
    repo = make_repo(w, scene.tmp / "swap", ["libz", "tool-2.0"])
    shutil.copy(w.rpms / "tool-1.0-1.noarch.rpm", repo / "Packages" / "tool-2.0-1.noarch.rpm")
    data = (repo / "Packages" / "tool-2.0-1.noarch.rpm").read_bytes()
    new_digest = hashlib.sha256(data).hexdigest()

    def fix(block: str) -> str:
        block = re.sub(r'<checksum type="sha256" pkgid="YES">\w+</checksum>',
                       f'<checksum type="sha256" pkgid="YES">{new_digest}</checksum>', block)
        return re.sub(r'<size package="\d+"', f'<size package="{len(data)}"', block)

    edit_primary(repo, lambda text: edit_package(text, "tool", "2.0", fix))
    resign(repo, w.repo_key)
    with serve(repo) as web:
        line = scene.compose(scene.definition(web.url))
    assert line == ("tool-2.0-1.noarch: the repository metadata lies about the NEVRA: the "
                    "signed header of tool-2.0-1.noarch.rpm is tool-1.0-1.noarch")
    assert not Published.of(scene.out).pool


def test_key_from_an_unpinned_url_is_refused(scene: Scene) -> None:
    site = scene.tmp / "site"
    shutil.copytree(scene.repo, site / "repo")
    shutil.copy(scene.world.repo_key.public, site / "key.asc")
    with serve(site) as web:
        line = scene.compose(scene.definition(web.url + "repo/", gpgkey=web.url + "key.asc"))
        assert line == (f"repository 'main': key {web.url}key.asc comes from a URL but the "
                        "definition pins no gpgkey_fingerprint for it; refusing to trust it")
        pinned = f'gpgkey_fingerprint = "{scene.world.repo_key.fingerprint}"\n'
        scene.publish(scene.definition(web.url + "repo/", gpgkey=web.url + "key.asc",
                                       extra=pinned))


def test_swapped_key_is_refused(scene: Scene) -> None:
    """The mirror swaps the key, the packages and the signed metadata together."""
    w = scene.world
    site = scene.tmp / "site"
    repo = site / "repo"
    shutil.copytree(scene.repo, repo)
    shutil.copy(w.thief_key.public, site / "key.asc")
    createrepo(repo, key=w.thief_key)
    pinned = f'gpgkey_fingerprint = "{w.repo_key.fingerprint}"\n'
    with serve(site) as web:
        line = scene.compose(scene.definition(web.url + "repo/", gpgkey=web.url + "key.asc",
                                              extra=pinned))
    assert line == (f"repository 'main': key {web.url}key.asc has fingerprint "
                    f"{w.thief_key.fingerprint}, which gpgkey_fingerprint does not pin")
