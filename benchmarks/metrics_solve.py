"""Solve time on Debian's whole index (as rpm-md) against libsolv's own rpmmd2solv + testsolv."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.context import Context
from benchmarks.debcorpus import SEEDS, cache_root
from benchmarks.debindex import build_index_repo
from benchmarks.measure import (
    Row,
    Target,
    Timing,
    median_timing,
    not_run,
    row,
    run_pipeline,
    run_timed,
    stderr_tail,
)

PEER = "gzip -dc | rpmmd2solv; testsolv"


def testcase(solv_file: Path, names: tuple[str, ...]) -> str:
    """A libsolv testcase installing `names` from one repository, recommends ignored (as MicroOS)."""
    lines = [
        "repo system 0 empty",
        f"repo debian 0 solv {solv_file.name}",
        "system x86_64 rpm system",
        "solverflags ignorerecommended",
        *(f"job install name {n}" for n in names),
    ]
    return "\n".join(lines) + "\n"


def definition(repo: Path, names: tuple[str, ...]) -> str:
    pkgs = ", ".join(f'"{n}"' for n in names)
    return (f'name = "debian-solve"\narch = "x86_64"\npackages = [{pkgs}]\n\n'
            f'[[repo]]\nname = "debian"\nurl = "file://{repo}"\n')


def solve(ctx: Context) -> list[Row]:
    """Seconds to solve a container host's package list against ~63,000 Debian packages."""
    repo, count = build_index_repo(cache_root())
    work = ctx.scratch("solve")
    solv_file = work / "debian.solv"
    primary = repo / "repodata" / "primary.xml.gz"

    def parse() -> Timing:
        with open(solv_file, "wb") as out:
            return run_pipeline(["gzip", "-dc", os.fspath(primary)], ["rpmmd2solv"], stdout=out.fileno())

    parse_t = median_timing(ctx.runs, ctx.cache, parse)
    case = work / "testcase.t"
    case.write_text(testcase(solv_file, SEEDS))
    result = subprocess.run(["testsolv", os.fspath(case)], capture_output=True, text=True, check=True)
    m = re.search(r"(\d+) installed packages", result.stdout)
    installs = int(m.group(1)) if m else 0
    if "problem" in result.stdout or not installs:
        raise RuntimeError(f"testsolv found problems solving the benchmark job:\n{result.stdout[:2000]}")
    solve_t = median_timing(ctx.runs, ctx.cache, lambda: run_timed([["testsolv", os.fspath(case)]]))
    peer_s = parse_t.seconds + solve_t.seconds
    metric, unit, target = "solve time", "s", Target("<=", 1.2)
    note = (f"{count} packages (Debian bookworm main amd64 as rpm-md), job installs {len(SEEDS)} "
            f"names -> {installs} packages; peer = rpmmd2solv {parse_t.seconds:.2f}s + testsolv "
            f"{solve_t.seconds:.2f}s, peak RSS {max(parse_t.max_rss, solve_t.max_rss) / 1e6:.0f} MB; "
            f"{ctx.cache.label}; median of {ctx.runs}")
    reason = _solver_missing()
    if reason:
        return [not_run(metric, PEER, peer_s, unit, reason, target)]
    defn = work / "debian.toml"
    defn.write_text(definition(repo, SEEDS))
    out = work / "rpmimg-solution.txt"
    try:
        with open(out, "wb") as f:
            t = median_timing(ctx.runs, ctx.cache, lambda: run_timed(
                [[sys.executable, "-c", _SOLVE, os.fspath(defn)]], stdout=f.fileno()))
    except subprocess.CalledProcessError as e:
        return [not_run(metric, PEER, peer_s, unit, f"rpmimg solver failed: {stderr_tail(e)}", target)]
    ours = int(out.read_text().split()[-1])
    agree = "same package count as testsolv" if ours == installs else f"{ours} packages vs testsolv's {installs}"
    return [row(metric, t.seconds, PEER, peer_s, unit, target=target,
                note=f"{note}; rpmimg: solver.depsolve.solve as compose calls it, from the definition "
                     f"to the package list in a fresh process, {agree}, peak RSS {t.max_rss / 1e6:.0f} MB")]


# What `rpmimg compose` does before fetching anything: read the definition, open the
# repositories, solve. Printed: the number of packages in the solution.
_SOLVE = """
import sys
from solver.definition import load_definition
from solver.depsolve import SolveRequest, solve
from solver.repodata import Repository
d = load_definition(sys.argv[1])
repos = tuple(Repository.open(s) for s in d.repos)
result = solve(SolveRequest(arch=d.arch, packages=d.packages, repos=repos, exclude=d.exclude,
                            ignore_recommends=d.ignore_recommends, multiversion=d.multiversion))
print(len(result.packages))
"""


def _solver_missing() -> str | None:
    try:
        import solver.depsolve  # noqa: F401
    except ImportError as e:
        return f"rpmimg's solver is not in this checkout yet ({e})"
    return None
