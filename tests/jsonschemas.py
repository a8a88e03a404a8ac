"""Every `--json` output checked against the JSON Schema files in schemas/ (one per verb,
sharing schemas/common.json; an error object against schemas/error.json)."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
# Verbs whose second word picks the schema.
GROUPS = ("pkg", "image", "state")
ALIASES = {"switch": "deploy", "image-diff": "diff"}


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
    return ALIASES.get(verb, verb)


def validate(argv: Sequence[str], stdout: str) -> Any:
    """Parse stdout and validate it against the verb's schema (or error.json); the value."""
    value = json.loads(stdout)
    name = "error" if isinstance(value, dict) and set(value) == {"error"} else schema_name(argv)
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, registry=_registry(),
                                                format_checker=jsonschema.FormatChecker())
    validator.validate(value)
    return value
