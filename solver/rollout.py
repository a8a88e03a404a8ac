"""Publish the staged rollout of an image version: images/NAME/rollout.json, signed.

The file (imagespec.rollout) says which share of the fleet may take the version it names.
It is written and signed under dot-names in images/NAME/, under the output's lock, then
renamed into place: the signature first, then the file. A client that reads the two
between the renames sees a signature that does not match, refuses to move, and tries again
on its next check.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from imagespec.published import IMAGES
from imagespec.rollout import ROLLOUT, ROLLOUT_SIGNATURE, Rollout, check_percent
from solver.confine import FILE_MODE
from solver.errors import PublishError
from solver.publish import ImageStore
from solver.signing import Signer

_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+~^-]*")


def publish_rollout(output: Path, name: str, percent: int, sign_key: Path,
                    version: str | None = None) -> Rollout:
    """Let `percent` of the fleet take `version` (default: what `latest` names) of image name."""
    check_percent(percent, "rollout")
    if not _NAME.fullmatch(name):
        raise PublishError(f"{name!r} is not an image name")
    store = ImageStore(output)
    if not sign_key.is_file():
        raise PublishError(f"{os.fspath(sign_key)}: the signing key file does not exist")
    with store.locked():
        store.remove_leftovers()
        chosen = version if version is not None else store.latest(name)
        if chosen is None:
            raise PublishError(f"{os.fspath(output)}: image {name!r} has no published version")
        if chosen not in store.versions(name):
            raise PublishError(f"{os.fspath(output)}: image {name!r} has no version {chosen!r}"
                               f" (published: {', '.join(store.versions(name)) or 'none'})")
        rollout = Rollout(name, chosen, percent)
        rel = f"{IMAGES}/{name}"
        staged = f"{rel}/.tmp-rollout-{os.getpid()}"
        out = store.out
        for leftover in (staged, staged + ".asc"):
            if out.exists(leftover):
                out.unlink(leftover)
        out.write(staged, rollout.dumps())
        with Signer(sign_key) as signer:
            signer.sign(output / staged, output / (staged + ".asc"))
        os.chmod(output / (staged + ".asc"), FILE_MODE)
        out.replace(staged + ".asc", f"{rel}/{ROLLOUT_SIGNATURE}")
        out.replace(staged, f"{rel}/{ROLLOUT}")
    return rollout
