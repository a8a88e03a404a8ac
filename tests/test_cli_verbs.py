"""The command line built for one named verb is the whole command line's part for it.

rpmimg.cli builds only the parsers of the module that registers the verb a command line
names (issue 17: every verb module and its parsers were a fixed cost of every command).
Its table VERBS must therefore say exactly what the modules register.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys

import pytest

from rpmimg import cli


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_verb_table_is_what_the_modules_register() -> None:
    assert list(_verbs(cli.build_parser())) == list(cli.VERBS)
    for name in cli.VERB_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(name).register(sub)
        assert list(sub.choices) == [v for v, m in cli.VERBS.items() if m == name], name


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_a_named_verb_gets_the_same_parser_as_in_the_whole_command_line(verb: str) -> None:
    whole = _verbs(cli.build_parser())[verb]
    alone = _verbs(cli.build_parser(verb))
    assert set(alone) == {v for v, m in cli.VERBS.items() if m == cli.VERBS[verb]}
    assert alone[verb].format_help() == whole.format_help()
    assert alone[verb].format_usage() == whole.format_usage()


def _rpmimg(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    script = f"import sys\n{prelude}\nfrom rpmimg.cli import main\nsys.argv[0] = 'rpmimg'\nsys.exit(main())"
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=60)


def test_help_and_an_unknown_verb_still_list_every_verb() -> None:
    shown = _rpmimg("--help")
    assert shown.returncode == 0
    for verb in cli.VERBS:
        assert re.search(rf"^    {re.escape(verb)}(\s|$)", shown.stdout, re.M), verb
    for args in (["nosuchverb"], ["--debug", "nosuchverb", "--json"], ["--deb", "nosuchverb"]):
        bad = _rpmimg(*args)
        assert bad.returncode == 2
        assert "invalid choice: 'nosuchverb'" in bad.stderr
        assert all(f"'{verb}'" in bad.stderr for verb in cli.VERBS)


def test_a_verb_whose_module_is_not_installed_is_an_unknown_verb() -> None:
    # A client-only install has no rpmimg.server: `compose` is refused like any unknown word.
    bad = _rpmimg("compose", "x", prelude="sys.modules['rpmimg.server'] = None")
    assert bad.returncode == 2
    assert "invalid choice: 'compose'" in bad.stderr
    assert "'status'" in bad.stderr and "'image'" not in bad.stderr


def test_a_verb_loads_no_other_verb_module() -> None:
    script = ("import sys\nfrom rpmimg.cli import main\nsys.argv[0] = 'rpmimg'\n"
              "try:\n    main(['pkg', 'info', '--help'])\nexcept SystemExit:\n    pass\n"
              "print(' '.join(sorted(m for m in sys.modules if m.startswith('rpmimg.'))))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    loaded = set(proc.stdout.strip().splitlines()[-1].split())
    assert "rpmimg.pkg" in loaded, proc.stderr
    assert not loaded & {m for m in cli.VERB_MODULES if m != "rpmimg.pkg"}


@pytest.mark.parametrize("columns", [None, "37", "0", "wide", "250"])
def test_help_is_as_wide_as_argparse_makes_it(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
    # cli._Formatter finds the width without shutil; argparse's own formatter uses shutil.
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert cli._Formatter("rpmimg")._width == argparse.HelpFormatter("rpmimg")._width
    parser = cli.build_parser("deploy")
    assert parser.formatter_class is cli._Formatter
    assert all(p.formatter_class is cli._Formatter for p in _verbs(parser).values())
