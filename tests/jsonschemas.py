"""Every `--json` output checked against the JSON Schema files in schemas/ (one per verb,
sharing schemas/common.json; an error object against schemas/error.json)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
# Verbs whose second word picks the schema.
GROUPS = ("pkg", "image", "state")


@functools.cache
def _registry() -> Registry[Any]:
    resources = []
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


def schema_name(argv: Sequence[str]) -> str:
    """The schema file of a command line's verb: `deploy`, `pkg info` -> pkg-info, ..."""
    words = [a for a in argv if a != "--debug"]
    verb = words[0]
    if verb in GROUPS:
        verb = f"{verb}-{words[1]}"
    if verb == "diff" and "--etc" in words:
        verb = "diff-etc"
    if verb in ("deploy", "switch") and "--download-only" in words:
        verb = "download"
    return verb


REF_KEYS = ("deployment", "replaces")
# Objects keyed by package NEVRA rather than by a name of ours.
NEVRA_KEYED = ("outside_usr", "outside_usr_new")


def vocabulary(value: Any, where: str = "$") -> None:
    """The rules every verb's output keeps, whatever its schema: snake_case keys, null
    rather than "", integer *_bytes, a deployment named as {"id", "image", "version"}."""
    if isinstance(value, dict):
        for key, item in value.items():
            at = f"{where}.{key}"
            assert re.fullmatch(r"[a-z][a-z0-9_]*", key) or where.endswith(NEVRA_KEYED), at
            if key.endswith("_bytes"):
                assert item is None or (isinstance(item, int) and not isinstance(item, bool)), at
            if key in REF_KEYS and item is not None:
                assert isinstance(item, dict) and {"id", "image", "version"} <= set(item), at
            vocabulary(item, at)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            vocabulary(item, f"{where}[{i}]")
    else:
        assert value != "", f"{where}: an absent value is null, not an empty string"


def validate(argv: Sequence[str], stdout: str) -> Any:
    """Parse stdout and validate it against the verb's schema (or error.json); the value.

    Every verb that answers --json has a schema file: a missing one fails the test."""
    value = json.loads(stdout)
    assert isinstance(value, dict), "--json output is one object"
    vocabulary(value)
    name = "error" if set(value) == {"error"} else schema_name(argv)
    path = SCHEMAS / f"{name}.json"
    assert path.is_file(), f"{' '.join(argv)}: --json output without a schema file {path.name}"
    schema = json.loads(path.read_text())
    validator = jsonschema.Draft202012Validator(schema, registry=_registry(),
                                                format_checker=jsonschema.FormatChecker())
    validator.validate(value)
    return value
