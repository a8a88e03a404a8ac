"""host.dataclasses_lean: the command line's dataclasses load no inspect (ast, dis,
tokenize: 0.9 MB) until a class without a docstring asks for it (fresh interpreters:
pytest itself has inspect loaded)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
PACKAGES = ("host", "rpmextents", "imagespec", "rpmimg", "solver", "deploy")


def _run(body: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], capture_output=True, text=True,
                       timeout=60, cwd=CHECKOUT)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_rpmimg_loads_dataclasses_without_inspect() -> None:
    out = _run("""
        import sys
        import rpmimg
        import deploy.transaction, deploy.verify, deploy.wholesystem, rpmimg.cli
        print("dataclasses" in sys.modules, *(m in sys.modules for m in ("inspect", "ast", "dis")))
    """)
    assert out == ["True", "False", "False", "False"]


def test_a_class_without_docstring_still_gets_one_and_inspect_is_the_real_module() -> None:
    out = _run("""
        import sys
        import rpmimg
        from dataclasses import dataclass

        @dataclass
        class Point:
            x: int
            y: int = 2

        print(Point.__doc__.replace(" ", ""))
        import inspect
        print(type(sys.modules["inspect"]).__name__, hasattr(inspect, "signature"), Point(1).y)
    """)
    assert out == ["Point(x:int,y:int=2)", "module", "True", "2"]


def test_an_inspect_already_loaded_is_left_alone() -> None:
    out = _run("""
        import sys, inspect
        real = sys.modules["inspect"]
        import rpmimg, dataclasses
        print(sys.modules["inspect"] is real, dataclasses.inspect is real)
    """)
    assert out == ["True", "True"]


def test_every_dataclass_of_rpmimg_has_a_docstring() -> None:
    """Else dataclasses writes one with inspect.signature, loading inspect after all."""
    missing = []
    for package in PACKAGES:
        for path in sorted((CHECKOUT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.ClassDef) and ast.get_docstring(node) is None
                        and any("dataclass" in ast.unparse(d) for d in node.decorator_list)):
                    missing.append(f"{path.relative_to(CHECKOUT)}:{node.lineno} {node.name}")
    assert missing == []


# --- the generated methods, compiled once (CompiledOnce) -------------------------------------

def _make_class(kept: Any) -> type:
    """A frozen dataclass with a default, a factory, a ClassVar and an excluded field, made
    while kept is dataclasses' exec (None: the builtin)."""
    import dataclasses
    from typing import ClassVar

    saved = dataclasses.__dict__.get("exec")
    if kept is None:
        dataclasses.__dict__.pop("exec", None)
    else:
        dataclasses.exec = kept  # type: ignore[attr-defined]
    try:
        @dataclasses.dataclass(frozen=True, order=True)
        class Span:
            """A test value."""

            start: int
            name: str = "x"
            tags: tuple[str, ...] = dataclasses.field(default_factory=tuple)
            note: str = dataclasses.field(default="", compare=False, repr=False)
            LIMIT: ClassVar[int] = 5

        return Span
    finally:
        if saved is None:
            dataclasses.__dict__.pop("exec", None)
        else:
            dataclasses.exec = saved  # type: ignore[attr-defined]


def _behaviour(cls: Any) -> list[object]:
    import dataclasses

    a, b = cls(1), cls(1, "x", (), "other")
    try:
        a.start = 2
        frozen = False
    except dataclasses.FrozenInstanceError:
        frozen = True
    return [repr(a), a == b, hash(a) == hash(b), cls(2) > a, frozen, cls(3, tags=("t",)).tags,
            {k: str(v) for k, v in cls.__init__.__annotations__.items()}, cls.LIMIT,
            [f.name for f in dataclasses.fields(cls)]]


def test_compiled_methods_behave_as_dataclasses_own_and_are_kept(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from host.dataclasses_lean import CompiledOnce

    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    plain = _behaviour(_make_class(None))
    first = CompiledOnce(os.fspath(tmp_path / "methods.marshal"))
    assert _behaviour(_make_class(first)) == plain
    assert first.compiled >= 6  # __init__, __repr__, __eq__, the order methods, __hash__, frozen's
    first.save()
    again = CompiledOnce(os.fspath(tmp_path / "methods.marshal"))
    assert _behaviour(_make_class(again)) == plain
    assert again.compiled == 0 and set(again.known) == set(first.known)
    again.save()  # nothing new: not rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["methods.marshal"]


@pytest.mark.parametrize("content", [
    b"", b"garbage", b"\0" * 64,
    "other interpreter", "strings for code", "truncated",  # made from a good file below
])
def test_a_cache_file_not_written_by_this_interpreter_is_ignored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes | str) -> None:
    import marshal
    from importlib.util import MAGIC_NUMBER

    from host.dataclasses_lean import CompiledOnce

    path = tmp_path / "methods.marshal"
    good = CompiledOnce(os.fspath(path))
    _make_class(good)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    good.save()
    whole = path.read_bytes()
    data = {"other interpreter": b"\x00\x01\r\n" + whole[len(MAGIC_NUMBER):],
            "strings for code": MAGIC_NUMBER + marshal.dumps({k: "print('no')" for k in good.known}),
            "truncated": whole[: len(whole) // 2]}.get(content, content)
    assert isinstance(data, bytes)
    path.write_bytes(data)
    cache = CompiledOnce(os.fspath(path))
    assert cache.known == {}
    plain = _behaviour(_make_class(None))
    assert _behaviour(_make_class(cache)) == plain and cache.compiled >= 6


def test_nothing_is_written_without_bytecode_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from host.dataclasses_lean import CompiledOnce

    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    cache = CompiledOnce(os.fspath(tmp_path / "sub" / "methods.marshal"))
    _make_class(cache)
    cache.save()
    assert cache.compiled >= 6 and list(tmp_path.iterdir()) == []


def test_rpmimg_makes_its_dataclasses_through_the_kept_methods() -> None:
    out = _run("""
        import sys, dataclasses
        import rpmimg, deploy.transaction
        from host.dataclasses_lean import CompiledOnce
        cache = dataclasses.exec
        print(type(cache).__name__, cache.path.endswith("host/__pycache__/dataclass-methods."
              + sys.implementation.cache_tag + ".marshal"), len(cache.known) >= 300)
    """)
    assert out == ["CompiledOnce", "True", "True"]
