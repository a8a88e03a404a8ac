"""dataclasses without inspect, for the command line.

dataclasses imports inspect (which brings ast, dis, tokenize and linecache: about 0.9 MB
resident in a deploy) only to write a docstring for a class that has none
(``inspect.signature``); every dataclass of rpmimg has its own. ``load`` imports
dataclasses with a stand-in bound as its ``inspect``: the first attribute asked of the
stand-in imports the real module and answers from it, so a class without a docstring
still gets the one dataclasses would write. Only dataclasses holds the stand-in:
``import inspect`` anywhere else imports the real module as ever.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _OnFirstUse(types.ModuleType):
    """A module's name bound before the module is loaded; loaded when first used."""

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self.__name__), name)


def load() -> None:
    """Import dataclasses, unless it or inspect already is, without loading inspect."""
    if "dataclasses" in sys.modules or "inspect" in sys.modules:
        return
    stand_in = _OnFirstUse("inspect")
    sys.modules["inspect"] = stand_in
    try:
        import dataclasses  # noqa: F401  (binds the stand-in as its inspect)
    finally:
        if sys.modules.get("inspect") is stand_in:
            del sys.modules["inspect"]
