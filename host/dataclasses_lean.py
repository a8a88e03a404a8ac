"""dataclasses without inspect, for the command line.

dataclasses imports inspect (which brings ast, dis, tokenize and linecache: about 0.9 MB
resident in a deploy) only to write a docstring for a class that has none
(``inspect.signature``); every dataclass of rpmimg has its own. ``load`` imports
dataclasses with a stand-in bound as its ``inspect``: the first attribute asked of the
stand-in imports the real module and answers from it, so a class without a docstring
still gets the one dataclasses would write. Only dataclasses holds the stand-in:
``import inspect`` anywhere else imports the real module as ever.

Making a dataclass compiles the methods it writes for it (``__init__``, ``__repr__``,
``__eq__``, ``__hash__``, and a frozen one's ``__setattr__`` and ``__delattr__``): for the 70
classes a deploy imports, 28 ms of its 58 ms of imports. ``load`` also gives dataclasses an
``exec`` that compiles each method's text once and keeps the code beside host's compiled
modules (``__pycache__/dataclass-methods.TAG.marshal``, written as Python writes its .pyc
files: not under ``PYTHONDONTWRITEBYTECODE``, and never where it can't), keyed by the text
itself, so a changed class compiles anew and nothing stale is used. A file that is not
one this interpreter wrote is ignored.
"""

from __future__ import annotations

import atexit
import builtins
import importlib
import marshal
import os
import sys
import types
from typing import Any

_MAX_CACHE = 16 << 20


class _OnFirstUse(types.ModuleType):
    """A module's name bound before the module is loaded; loaded when first used."""

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self.__name__), name)


def load() -> None:
    """Import dataclasses, unless it or inspect already is, without loading inspect; and
    give it the exec that keeps the methods it compiles (CompiledOnce)."""
    if "dataclasses" not in sys.modules and "inspect" not in sys.modules:
        stand_in = _OnFirstUse("inspect")
        sys.modules["inspect"] = stand_in
        try:
            import dataclasses  # (binds the stand-in as its inspect)
        finally:
            if sys.modules.get("inspect") is stand_in:
                del sys.modules["inspect"]
    import dataclasses

    tag = sys.implementation.cache_tag
    if tag is not None and not isinstance(vars(dataclasses).get("exec"), CompiledOnce):
        here = os.path.dirname(os.path.abspath(__file__))
        methods = CompiledOnce(os.path.join(here, "__pycache__", f"dataclass-methods.{tag}.marshal"))
        # A global of the module is found before the builtin its _create_fn calls.
        setattr(dataclasses, "exec", methods)  # noqa: B010
        atexit.register(methods.save)


def _magic() -> bytes:
    from importlib.util import MAGIC_NUMBER

    return MAGIC_NUMBER


class CompiledOnce:
    """exec() for dataclasses: a source text is compiled once (as dataclasses would compile
    it, with no __future__ flags of ours) and its code kept in the file at path."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.known = _read(path)
        self.compiled = 0  # texts compiled by this process

    def __call__(self, source: Any, globals: Any = None, locals: Any = None) -> None:
        if not isinstance(source, str):
            builtins.exec(source, globals, locals)
            return
        code = self.known.get(source)
        if code is None:
            code = self.known[source] = compile(source, "<string>", "exec", dont_inherit=True)
            self.compiled += 1
        builtins.exec(code, globals, locals)

    def save(self) -> None:
        """Write what is known, when this process compiled anything and may write bytecode."""
        if not self.compiled or sys.dont_write_bytecode:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "xb") as f:
                f.write(_magic() + marshal.dumps(self.known))
            os.replace(tmp, self.path)
            self.compiled = 0
        except (OSError, ValueError):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _read(path: str) -> dict[str, types.CodeType]:
    """The texts and codes of a file save() wrote with this interpreter; {} for anything else."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CACHE + 1)
        magic = _magic()
        if len(data) > _MAX_CACHE or not data.startswith(magic):
            return {}
        known = marshal.loads(data[len(magic):])
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    if not isinstance(known, dict) or not all(
            type(k) is str and type(v) is types.CodeType for k, v in known.items()):
        return {}
    return known
