"""rollout.json: the staged rollout of an image's latest version, published beside `latest`.

    images/NAME/rollout.json      {"format": 1, "name": NAME, "version": VERSION, "percent": P}
    images/NAME/rollout.json.asc  armoured detached signature, by a key the clients trust

A client takes VERSION only when its own stable place in the fleet (deploy.rollout) is
below P percent. The file can only hold machines back: it applies to the one version it
names, and that version's manifest must verify on its own. A rollout file that is present
but unsigned, tampered or malformed is an error (no machine moves on it); one that names
another version does not apply to the manifest at hand. No rollout file means 100%.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from imagespec.errors import ManifestError

FORMAT = 1
ROLLOUT = "rollout.json"
ROLLOUT_SIGNATURE = ROLLOUT + ".asc"
# From images/NAME/VERSION/manifest.json (or latest/manifest.json) to the rollout file.
FROM_MANIFEST = "../" + ROLLOUT
# A rollout file is a few dozen bytes; nothing larger is read.
LIMIT = 4096
_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+~^-]*")
_KEYS = ("format", "name", "version", "percent")


class RolloutError(ManifestError):
    """A rollout file is malformed, or its signature does not verify."""


@dataclass(frozen=True)
class Rollout:
    """Which share of the fleet may take `version` of image `name` now."""

    name: str
    version: str
    percent: int  # 0 (stopped) to 100 (everyone)

    def dumps(self) -> bytes:
        return (json.dumps({"format": FORMAT, "name": self.name, "version": self.version,
                            "percent": self.percent}, sort_keys=True) + "\n").encode()


def check_percent(value: object, where: str) -> int:
    """An integer from 0 to 100, else RolloutError naming where."""
    if type(value) is not int or not 0 <= value <= 100:
        raise RolloutError(f"{where}: percent must be an integer from 0 to 100, not {value!r}")
    return value


def parse(data: bytes, where: str) -> Rollout:
    """The rollout in data (untrusted bytes), or RolloutError naming where and the fault."""
    if len(data) > LIMIT:
        raise RolloutError(f"{where}: larger than {LIMIT} bytes")
    try:
        obj: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RolloutError(f"{where}: not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RolloutError(f"{where}: not a JSON object")
    unknown = sorted(set(obj) - set(_KEYS))
    missing = [k for k in _KEYS if k not in obj]
    if unknown or missing:
        what = f"unknown key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"
        raise RolloutError(f"{where}: {what}")
    if obj["format"] != FORMAT or type(obj["format"]) is not int:
        raise RolloutError(f"{where}: unsupported format {obj['format']!r} (expected {FORMAT})")
    for key in ("name", "version"):
        value = obj[key]
        if not isinstance(value, str) or len(value) > 255 or not _NAME.fullmatch(value):
            raise RolloutError(f"{where}: {key} {value!r} is not a valid image {key}")
    return Rollout(obj["name"], obj["version"], check_percent(obj["percent"], where))
