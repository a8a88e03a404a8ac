"""Server side: compose images from package lists with libsolv and publish them.

`solve` is the typed entry to libsolv (also what benchmarks call):

    repo = Repository.open(RepoSource("main", "file:///srv/repo/"))
    result = solve(SolveRequest(arch="x86_64", packages=("bash",), repos=(repo,)))
"""

from solver.definition import ImageDefinition, RepoSource, load_definition
from solver.depsolve import ResolvedPackage, SolveRequest, SolveResult, solve
from solver.repodata import Repository

__all__ = [
    "ImageDefinition",
    "RepoSource",
    "Repository",
    "ResolvedPackage",
    "SolveRequest",
    "SolveResult",
    "load_definition",
    "solve",
]
