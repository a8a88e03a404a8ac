"""host.files.private_dir and remove_tree: tempfile's and shutil's work, never following a symlink."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from host.files import make_private_dir, private_dir, remove_tree


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep").write_text("keep")
    (outside / "sub" / "keep").write_text("keep")
    return outside


def _snapshot(root: Path) -> list[tuple[str, int]]:
    return sorted((os.fspath(p.relative_to(root)), p.lstat().st_mode) for p in root.rglob("*"))


def test_private_dir_is_new_private_and_gone_after_the_block(tmp_path: Path) -> None:
    with private_dir("x-", tmp_path) as d:
        assert d.parent == tmp_path and d.name.startswith("x-") and len(d.name) == 2 + 12
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        (d / "a" / "b").mkdir(parents=True)
        (d / "a" / "b" / "f").write_bytes(b"1")
    assert not d.exists()
    with pytest.raises(RuntimeError), private_dir("x-", tmp_path) as d2:
        (d2 / "f").write_bytes(b"1")
        raise RuntimeError("the block failed")
    assert not d2.exists()
    assert list(tmp_path.iterdir()) == []


def test_make_private_dir_never_takes_an_existing_name(tmp_path: Path) -> None:
    made = {make_private_dir(tmp_path, "p-") for _ in range(50)}
    assert len(made) == 50 and all(p.is_dir() for p in made)


def test_remove_tree_removes_symlinks_and_never_what_they_point_at(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    before = _snapshot(outside)
    tree = tmp_path / "tree"
    (tree / "d" / "e").mkdir(parents=True)
    (tree / "d" / "e" / "f").write_bytes(b"x")
    (tree / "d" / "to-dir").symlink_to(outside)
    (tree / "d" / "to-sub").symlink_to(outside / "sub")
    (tree / "to-file").symlink_to(outside / "keep")
    (tree / "dangling").symlink_to(tmp_path / "nothing")
    remove_tree(tree)
    assert not os.path.lexists(tree)
    assert _snapshot(outside) == before


def test_remove_tree_of_a_symlink_removes_only_the_link(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    before = _snapshot(outside)
    link = tmp_path / "link"
    link.symlink_to(outside)
    remove_tree(link)
    assert not os.path.lexists(link) and _snapshot(outside) == before


def test_remove_tree_of_a_file_and_of_nothing(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"1")
    remove_tree(f)
    assert not f.exists()
    with pytest.raises(FileNotFoundError):
        remove_tree(tmp_path / "missing")
    remove_tree(tmp_path / "missing", ignore_errors=True)

