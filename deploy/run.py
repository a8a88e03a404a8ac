"""Run external commands: argument lists, a scrubbed environment, one clear error."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence

from deploy.errors import CommandError

log = logging.getLogger(__name__)

# Only what the tools we call need; no locale surprises in parsed output.
_KEEP_ENV = ("PATH", "TMPDIR")


def scrubbed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    allowed_codes: Sequence[int] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run argv, capturing output; raise CommandError unless it exits with an allowed code."""
    log.debug("running %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, env=scrubbed_env(env), check=False
        )
    except FileNotFoundError as e:
        raise CommandError(f"{argv[0]}: command not found") from e
    if proc.returncode in allowed_codes:
        return proc
    detail = proc.stderr.decode(errors="replace").strip().splitlines()
    last = f": {detail[-1]}" if detail else ""
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise CommandError(f"{argv[0]} was killed by {name}{last}")
    raise CommandError(f"{argv[0]} exited {proc.returncode}{last}")
