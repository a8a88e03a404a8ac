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


def test_a_symlink_in_the_replaced_tree_is_not_followed_out_of_it(tmp_path: Path) -> None:
    # Hostile: the replaced deployment's share/factory/etc points out of the tree, where the
    # file does exist; the comparison must not see it (it is new), nor anything else outside.
    from deploy.layout import Layout
    from deploy.outside import new_outside_usr
    from deploy.system import System

    layout = Layout(top=tmp_path, sysroot=tmp_path)
    tree = layout.deployment("1")
    (tree / "share/factory").mkdir(parents=True)
    escape = tmp_path / "escape"
    escape.mkdir()
    (escape / "x.conf").write_text("outside\n")
    (tree / "share/factory/etc").symlink_to(escape)
    (tree / "share/factory/var").mkdir()
    (tree / "share/factory/var/kept").write_text("")
    system = System(tmp_path, layout, visible=True)
    outside = {"p-1-1.x86_64": ["/etc/x.conf", "/var/kept"], "q-1-1.x86_64": ["/var/kept"]}
    assert new_outside_usr(system, "1", outside) == {"p-1-1.x86_64": ["/etc/x.conf"]}
    assert new_outside_usr(system, None, outside) is None
    assert new_outside_usr(system, "2", outside) is None  # the replaced tree is gone
    assert (escape / "x.conf").read_text() == "outside\n"
    # share/factory itself a symlink out of the tree: every path counts as new, no error.
    (tree / "share/factory/var/kept").unlink()
    (tree / "share/factory/var").rmdir()
    (tree / "share/factory/etc").unlink()
    (tree / "share/factory").rmdir()
    (tree / "share/factory").symlink_to(escape)
    assert new_outside_usr(system, "1", outside) == outside


def test_packages_the_replaced_deployment_has_bring_nothing_new(tmp_path: Path) -> None:
    # A package the replaced deployment has too (the same sha256) is not looked up: even a
    # path its tree lacks is not new from it; another package's same path still is.
    from deploy.layout import Layout
    from deploy.outside import new_outside_usr
    from deploy.system import System

    layout = Layout(top=tmp_path, sysroot=tmp_path)
    (layout.deployment("1") / "share/factory/etc").mkdir(parents=True)
    system = System(tmp_path, layout, visible=True)
    outside = {"p-1-1.x86_64": ["/etc/gone.conf"], "q-2-1.x86_64": ["/etc/gone.conf"]}
    assert new_outside_usr(system, "1", outside, had={"p-1-1.x86_64"}) == {"q-2-1.x86_64": ["/etc/gone.conf"]}
    assert new_outside_usr(system, "1", outside) == outside
