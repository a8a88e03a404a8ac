"""host.dataclasses_lean: the command line's dataclasses load no inspect (ast, dis,
tokenize: 0.9 MB) until a class without a docstring asks for it (fresh interpreters:
pytest itself has inspect loaded)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

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
