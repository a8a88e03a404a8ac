"""Log messages without loading the logging module until one is to be shown.

logging brings traceback, linecache, tokenize and string along (about 0.45 MB resident
in a deploy or a verify of 10,000 files), and most commands print no log message at all.
A module takes ``log = host.log.get(__name__)`` and calls ``log.debug``, ``log.info`` or
``log.warning(msg, *args)`` as on a ``logging.Logger``:

- while logging is not loaded, a message below the level the command line set
  (``configure``; WARNING until it does) costs one comparison and is dropped;
- a message at or above it loads logging, sets it up as ``configure`` asked
  (``logging.basicConfig``), and goes to logging's logger of the module's name;
- once logging is loaded, by such a message or by whoever else imports it (a test
  runner), every message goes to logging, whose loggers and handlers decide as ever.
"""

from __future__ import annotations

import sys
from typing import Any

DEBUG, INFO, WARNING = 10, 20, 30  # logging's numbers

_threshold = WARNING
_setup: dict[str, Any] | None = None  # logging.basicConfig's arguments, not yet applied


def configure(level: int, **basic: Any) -> None:
    """Show messages of level and above, as ``logging.basicConfig(level=level, **basic)``
    would: applied when logging is loaded (at once, when it already is)."""
    global _threshold, _setup
    _threshold = level
    _setup = {"level": level, **basic}
    if "logging" in sys.modules:
        _logging()


def _logging() -> Any:
    """The logging module, loaded now if need be, set up as configure asked."""
    global _setup
    import logging

    if _setup is not None:
        setup, _setup = _setup, None
        logging.basicConfig(**setup)
    return logging


class Logger:
    """A module's logger: its messages go to logging's logger of the same name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _log(self, level: int, msg: str, args: tuple[Any, ...]) -> None:
        if level < _threshold and "logging" not in sys.modules:
            return
        # stacklevel 3: the record names the caller of debug/info/warning, not this module
        _logging().getLogger(self.name).log(level, msg, *args, stacklevel=3)

    def debug(self, msg: str, *args: Any) -> None:
        self._log(DEBUG, msg, args)

    def info(self, msg: str, *args: Any) -> None:
        self._log(INFO, msg, args)

    def warning(self, msg: str, *args: Any) -> None:
        self._log(WARNING, msg, args)


def get(name: str) -> Logger:
    """The logger of module name (as ``logging.getLogger(name)``)."""
    return Logger(name)
