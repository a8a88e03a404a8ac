"""The deploy report lists only the files outside /usr that are new since the deployment
it replaces; --verbose and --json give them all."""

from __future__ import annotations

from pathlib import Path

from deploytools import Images, deploy, rpmimg, sign_all
from imagepub import publish

from fixtures.rpmbuild import build_package
from fixtures.spec import FileSpec, PackageSpec

pytest_plugins = ("deployenv",)

NEWCOMER_ETC = "/etc/newcomer-etc.conf"
OLD_ETC = "/etc/outside-usr.conf"  # the "outside-usr" fixture's, in every version here


def _v3_with_a_new_etc_file(images: Images, tmp_path: Path) -> Path:
    spec = PackageSpec(name="newcomer-etc", files=(
        FileSpec("/usr/share/newcomer-etc/readme", content=b"x\n"),
        FileSpec(NEWCOMER_ETC, content=b"setting = 3\n"),
    ))
    rpms = tmp_path / "rpms"
    rpms.mkdir()
    extra = build_package(spec, rpms)
    sign_all([extra], images.key)
    # Its own output: the session's "latest" stays v2.
    return publish(tmp_path / "out", "demo", "20261123.3", [*images.v2_rpms, extra], images.key)


def test_update_report_lists_only_new_outside_usr_files(sysroot: Path, images: Images,
                                                        tmp_path: Path) -> None:
    v3 = _v3_with_a_new_etc_file(images, tmp_path)
    first = deploy(sysroot, images.v1, images.key).json()
    assert first["outside_usr_new"] is None  # nothing replaced: nothing to compare with
    text = rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public, v3).out
    lines = text.splitlines()
    head = next(line for line in lines if "outside /usr" in line)
    assert "1 new since deployment 1 (--verbose lists all)" in head, text
    assert NEWCOMER_ETC in text and "newcomer-etc-" in text
    assert OLD_ETC not in text  # kept from deployment 1: not relisted
    assert len(lines) <= 10, lines


def test_json_gives_every_outside_usr_file_and_the_new_ones(sysroot: Path, images: Images,
                                                            tmp_path: Path) -> None:
    v3 = _v3_with_a_new_etc_file(images, tmp_path)
    deploy(sysroot, images.v1, images.key)
    value = deploy(sysroot, v3, images.key).json()  # validated against schemas/deploy.json
    every = [p for paths in value["outside_usr"].values() for p in paths]  # type: ignore[attr-defined]
    new = [p for paths in value["outside_usr_new"].values() for p in paths]  # type: ignore[attr-defined]
    assert OLD_ETC in every and NEWCOMER_ETC in every
    assert new == [NEWCOMER_ETC]


def test_verbose_text_lists_all(sysroot: Path, images: Images, tmp_path: Path) -> None:
    v3 = _v3_with_a_new_etc_file(images, tmp_path)
    deploy(sysroot, images.v1, images.key)
    text = rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public, "--verbose", v3).out
    assert OLD_ETC in text and NEWCOMER_ETC in text and "new since" not in text
