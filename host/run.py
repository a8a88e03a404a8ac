"""Run external commands: argument lists, a scrubbed environment, one clear error.

Every command rpmimg runs (gpgv, rsync, mount, btrfs, ...) goes through `run`: never a
shell string, only PATH and TMPDIR from the caller's environment (and `LC_ALL=C`, so
parsed output is not translated), stdin closed unless input is given, the command line
logged under `--debug`, and a message that says which of "not found", "killed by a
signal", "did not finish" and "exited N" happened, with the command's last error line.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from host.log import get as logger

if TYPE_CHECKING:
    import subprocess

log = logger(__name__)

# Only what the tools we call need; no locale surprises in parsed output.
_KEEP_ENV = ("PATH", "TMPDIR")


class CommandError(Exception):
    """An external command was not found, was killed, timed out or failed."""


def running(pid: int) -> bool:
    """Whether a process with this pid exists (another user's too): a directory named after
    a pid that does not is what a killed process left."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scrubbed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def _last_line(stderr: bytes | None) -> str:
    detail = (stderr or b"").decode(errors="replace").strip().splitlines()
    return f": {detail[-1]}" if detail else ""


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    allowed_codes: Sequence[int] = (0,),
    timeout: float | None = None,
    stdin_path: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv, capturing output; raise CommandError unless it exits with an allowed code.

    `env` adds to the scrubbed environment; `timeout` (seconds) kills the command after it;
    `stdin_path` names a file for its standard input (streamed, never read in here).
    """
    if stdin_path is not None:
        with open(stdin_path, "rb") as f:
            return _run(argv, None, env, allowed_codes, timeout, f.fileno())
    return _run(argv, input, env, allowed_codes, timeout, None)


def _run(argv: Sequence[str], input: bytes | None, env: Mapping[str, str] | None,
         allowed_codes: Sequence[int], timeout: float | None, stdin: int | None,
         ) -> subprocess.CompletedProcess[bytes]:
    # Imported here: most modules import this one, and many commands run nothing.
    import shlex
    import subprocess

    log.debug("running %s", shlex.join(argv))
    if stdin is None and input is None:
        stdin = subprocess.DEVNULL
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, env=scrubbed_env(env), check=False,
            stdin=stdin, timeout=timeout,
        )
    except FileNotFoundError as e:
        raise CommandError(f"{argv[0]}: command not found") from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(f"{argv[0]} did not finish within {timeout:g} s"
                           f"{_last_line(e.stderr)}") from e
    if proc.returncode in allowed_codes:
        return proc
    last = _last_line(proc.stderr)
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        raise CommandError(f"{argv[0]} was killed by {name}{last}")
    raise CommandError(f"{argv[0]} exited {proc.returncode}{last}")
