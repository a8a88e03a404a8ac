"""host.log: messages below the level are dropped without loading logging; one to show
loads it, set up as the command line asked, and names its caller (each case runs in a
fresh interpreter: pytest itself has logging loaded)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(body: str) -> subprocess.CompletedProcess[str]:
    script = "import sys\nfrom host import log as hostlog\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_messages_below_the_level_load_nothing() -> None:
    r = _run("""
        hostlog.configure(hostlog.WARNING, format="x: %(message)s")
        log = hostlog.get("deploy.something")
        log.debug("debug %s", 1)
        log.info("info %s", 2)
        print("logging" in sys.modules, "traceback" in sys.modules)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
    assert r.stderr == ""


def test_a_warning_loads_logging_set_up_as_configured_and_names_its_caller() -> None:
    r = _run("""
        hostlog.configure(hostlog.WARNING, format="rpmimg: %(name)s %(funcName)s: %(message)s")
        log = hostlog.get("deploy.something")
        def caller():
            log.info("not shown")
            log.warning("shown %s of %d", "one", 2)
        caller()
        print("logging" in sys.modules)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True"]
    assert r.stderr == "rpmimg: deploy.something caller: shown one of 2\n"


@pytest.mark.parametrize("loaded_first", [False, True])
def test_debug_level_shows_debug_messages_once_logging_is_loaded(loaded_first: bool) -> None:
    """--debug (configure at DEBUG) shows them; so it does when something had loaded
    logging before configure (its basicConfig is applied then, and not twice)."""
    r = _run(f"""
        if {loaded_first}:
            import logging
        hostlog.configure(hostlog.DEBUG, format="d: %(message)s")
        log = hostlog.get("x")
        log.debug("first")
        log.debug("second")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "d: first\nd: second\n"


def test_without_configure_a_warning_is_shown_as_logging_would() -> None:
    """A library use (no command line): logging's own last-resort handler shows it."""
    r = _run("""
        hostlog.get("lib").info("dropped")
        hostlog.get("lib").warning("careful")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "careful\n"
