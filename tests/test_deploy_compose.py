"""The real pipeline: `rpmimg compose` publishes from an rpm-md repository, `rpmimg deploy`
deploys it, and the result equals rpm -i of the same RPMs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from deploytools import Images, deploy, rpmimg

from fixtures import catalog
from fixtures.repos import createrepo

from oracle import assert_same_tree, rpm_install

pytest_plugins = ("deployenv",)

NAMES = ("sizes", "hardlinks", "symlinks", "caps", "modes", "owners", "outside-usr", "devices")


@pytest.mark.skipif(shutil.which("createrepo_c") is None, reason="needs createrepo_c")
def test_composed_image_deploys_like_rpm_install(sysroot: Path, images: Images, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "Packages").mkdir(parents=True)
    rpms = [p for p in images.v1_rpms if p.name.rsplit("-", 2)[0] in NAMES]
    assert len(rpms) == len(NAMES)
    for p in rpms:
        shutil.copy(p, repo / "Packages")
    createrepo(repo, key=images.key)
    definition = tmp_path / "demo.toml"
    definition.write_text(
        'name = "composed"\narch = "x86_64"\n'
        f"packages = {list(NAMES)!r}\n".replace("'", '"')
        + f'[[repo]]\nname = "fixtures"\nurl = "file://{repo}/"\ngpgkey = "{images.key.public}"\n'
    )
    out = tmp_path / "out"
    rpmimg("compose", definition, "-o", out, "--sign-key", images.key.secret)
    result = deploy(sysroot, out, images.key).json()
    assert (result["outcome"], result["deployment"]["image"], result["packages"]) == ("deployed", "composed", len(NAMES))

    expected = tmp_path / "rpm-root"
    rpm_install(rpms, expected, passwd=catalog.PASSWD, group=catalog.GROUP)
    tree = sysroot / "@rpmimg/deployments" / str(result["deployment"]["id"])
    assert_same_tree(expected / "usr", tree, exclude=("/lib/sysimage/packages", "/lib/sysimage/rpmimg", "/lib/sysimage/rpm", "/share/factory"))
    q = subprocess.run(["rpm", "-qp", "--nosignature", *sorted((tree / "lib/sysimage/packages").iterdir())],
                       capture_output=True, text=True, check=True)
    assert sorted(line.rsplit("-", 2)[0] for line in q.stdout.split()) == sorted(NAMES)
    # Composing again publishes nothing new; deploying it again changes nothing.
    rpmimg("compose", definition, "-o", out, "--sign-key", images.key.secret)
    assert deploy(sysroot, out, images.key).json()["outcome"] == "no change"
