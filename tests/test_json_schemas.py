"""Every verb that takes --json has a JSON Schema file, found by walking the real parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jsonschema
import pytest
from jsonschemas import SCHEMAS, schema_name, validate

from rpmimg.cli import build_parser


def _json_commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
                   ) -> list[tuple[str, ...]]:
    """Each command line (verb, or group and sub-verb) whose parser accepts --json, with
    `--etc` or `--download-only` added for a verb that takes it (its output has its own schema)."""
    found = []
    options = {o for a in parser._actions for o in a.option_strings}
    if "--json" in options:
        found.append(words)
        found += [(*words, flag) for flag in ("--etc", "--download-only") if flag in options]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _json_commands(child, (*words, name))
    return found


COMMANDS = _json_commands(build_parser())


def test_the_walk_sees_the_verbs_it_should() -> None:
    # The walk itself could be wrong: it must see top-level verbs and grouped sub-verbs.
    seen = {" ".join(c) for c in COMMANDS}
    assert {"deploy", "status", "pkg info", "image diff", "diff --etc", "deploy --download-only"} <= seen


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_every_json_command_has_a_schema(words: tuple[str, ...]) -> None:
    path = SCHEMAS / f"{schema_name(words)}.json"
    assert path.is_file(), f"`rpmimg {' '.join(words)} --json` has no schema ({path.name})"


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.json")), ids=lambda p: p.name)
def test_every_schema_is_a_valid_draft_2020_12_schema(path: Path) -> None:
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"].endswith("/" + path.name)


def test_output_of_a_verb_without_a_schema_fails() -> None:
    with pytest.raises(AssertionError, match="without a schema file"):
        validate(["no-such-verb"], '{"deployment": null}')


def test_output_off_its_schema_fails() -> None:
    # rollout's schema is strict: a misspelt key is caught.
    with pytest.raises(jsonschema.ValidationError):
        validate(["rollout", "out", "demo", "10"], '{"image": "demo", "version": "1", "pct": 10}')
    assert validate(["rollout"], '{"image": "demo", "version": "1", "percent": 10}')["percent"] == 10
