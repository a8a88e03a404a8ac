"""The typed boundary around libsolv: a `SolveRequest` in, a `SolveResult` or `DepsolveError` out.

Only this module touches the `solv` bindings. An image is a fresh install: nothing
is installed, every named package or capability becomes an install job, and the
transaction's new solvables are the image's packages.
"""

from __future__ import annotations

import fnmatch
import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import solv

from rpmextents.nevra import Nevra, compare_evr
from solver.errors import DepsolveError, RepoError
from solver.fetch import Checksum
from solver.repodata import Repository


@dataclass(frozen=True)
class SolveRequest:
    """What to solve: the job of an image definition over loaded repositories."""

    arch: str
    packages: tuple[str, ...]
    repos: tuple[Repository, ...] = field(repr=False)
    exclude: tuple[str, ...] = ()
    ignore_recommends: bool = True
    multiversion: tuple[str, ...] = ("multiversion(kernel)",)


@dataclass(frozen=True)
class ResolvedPackage:
    """One package of the solution, with where and how to fetch it."""

    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    repo: str
    url: str
    checksum: Checksum
    size: int | None

    @property
    def nevra(self) -> str:
        # rpm-md writes epoch="0" for a package without one; libsolv then drops it.
        return str(Nevra(self.name, self.epoch, self.version, self.release, self.arch))


@dataclass(frozen=True)
class SolveResult:
    """The packages an image definition resolved to."""

    packages: tuple[ResolvedPackage, ...]  # sorted by name, then arch, then rpm's version order
    filelists_loaded: bool


def parse_evr(evr: str) -> tuple[int | None, str, str]:
    """Split libsolv's "E:V-R" (epoch optional) into its parts."""
    epoch: int | None = None
    if ":" in evr:
        head, evr = evr.split(":", 1)
        epoch = int(head)
    version, _, release = evr.rpartition("-")
    if not version:
        version, release = release, ""
    return epoch, version, release


# createrepo puts these files into primary.xml; any other file dependency needs filelists.
def _in_primary(path: str) -> bool:
    return path.startswith("/etc/") or "bin/" in path or path == "/usr/lib/sendmail"


# How a definition's package strings are matched: name, provides, name.arch, "name = evr".
SELECT_FLAGS = (solv.Selection.SELECTION_NAME | solv.Selection.SELECTION_PROVIDES
                | solv.Selection.SELECTION_CANON | solv.Selection.SELECTION_DOTARCH
                | solv.Selection.SELECTION_REL)


class _Pool:
    """A libsolv pool loaded from rpm-md repositories."""

    def __init__(self, request: SolveRequest) -> None:
        self.request = request
        self.pool = solv.Pool()
        self.pool.setdisttype(solv.Pool.DISTTYPE_RPM)
        self.pool.setarch(request.arch)
        # As zypp and dnf do: x86_64 and i686 builds of one name may be installed together.
        self.pool.set_flag(solv.Pool.POOL_FLAG_IMPLICITOBSOLETEUSESCOLORS, 1)
        if not self.pool.isknownarch(self.pool.str2id(request.arch)):
            raise DepsolveError(f"unknown architecture {request.arch!r}")
        self.repos: dict[int, Repository] = {}
        self.filelists_loaded = False
        for repository in request.repos:
            repo = self.pool.add_repo(repository.name)
            repo.priority = -repository.source.priority  # zypper: lower wins; libsolv: higher
            self._add(repo, repository, "primary", 0)
            self.repos[repo.id] = repository
        if self._needs_filelists(self._index()):
            for repo in self.pool.repos:
                self._add(repo, self.repos[repo.id], "filelists",
                          solv.Repo.REPO_EXTEND_SOLVABLES | solv.Repo.REPO_LOCALPOOL)
            self.filelists_loaded = True
            self._index()

    def _add(self, repo: solv.Repo, repository: Repository, kind: str, flags: int) -> None:
        plain = repository.open_metadata(kind)
        if plain is None:
            if kind == "filelists":
                return  # a repository without filelists simply provides no more files
            raise RepoError(f"repository {repository.name!r} has no {kind} metadata")
        with plain:
            # libsolv closes the descriptor it is given.
            f = solv.xfopen_fd("", os.dup(plain.fileno()))
            try:
                ok = repo.add_rpmmd(f, None, flags)
            finally:
                f.close()
        if not ok:
            raise RepoError(
                f"repository {repository.name!r}: cannot parse {kind} metadata: "
                f"{self.pool.errstr}"
            )

    def _index(self) -> list[int]:
        """Index provides; returns the ids of files that dependencies name."""
        files: list[int] = self.pool.addfileprovides_queue()
        self.pool.createwhatprovides()
        return files

    def _needs_filelists(self, files: list[int]) -> bool:
        """Whether a file dependency that primary cannot resolve may matter to this job.

        Only file dependencies reachable from the job (over requires, and recommends
        when they count) are considered, so a repository whose unrelated packages need
        filelists does not make every solve load them.
        """
        if any(p.startswith("/") and not _in_primary(p) for p in self.request.packages):
            return True
        unresolved = {f for f in files
                      if not _in_primary(self.pool.id2str(f)) and not self.pool.whatprovides(f)}
        if not unresolved:
            return False
        keys = [solv.SOLVABLE_REQUIRES]
        if not self.request.ignore_recommends:
            keys.append(solv.SOLVABLE_RECOMMENDS)
        stack = [s.id for spec in self.request.packages
                 for s in self.pool.select(spec, SELECT_FLAGS).solvables()]
        seen: set[int] = set()
        while stack:
            sid = stack.pop()
            if sid in seen:
                continue
            seen.add(sid)
            solvable = self.pool.solvables[sid]
            for key in keys:
                for dep in solvable.lookup_deparray(key):
                    if dep.id in unresolved:
                        return True
                    stack.extend(p.id for p in self.pool.whatprovides(dep.id))
        return False

    def consider_all_but(self, patterns: Iterable[str]) -> None:
        """Hide excluded packages from the solver, as if the repositories lacked them."""
        patterns = tuple(patterns)
        if not patterns:
            return
        keep = [s.id for s in self.pool.solvables_iter()
                if not any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
        self.pool.set_considered_list(keep)

    def jobs(self) -> list[solv.Job]:
        jobs: list[solv.Job] = []
        flags = SELECT_FLAGS
        for spec in self.request.multiversion:
            selection = self.pool.select(spec, flags)
            jobs += selection.jobs(solv.Job.SOLVER_MULTIVERSION)
        missing: list[str] = []
        for spec in self.request.packages:
            spec_flags = flags | (solv.Selection.SELECTION_FILELIST if spec.startswith("/") else 0)
            selection = self.pool.select(spec, spec_flags)
            if selection.isempty():
                missing.append(spec)
                continue
            jobs += selection.jobs(solv.Job.SOLVER_INSTALL)
        if missing:
            raise DepsolveError("no package provides " + ", ".join(repr(m) for m in missing))
        return jobs


def solve(request: SolveRequest) -> SolveResult:
    """Resolve the request into the complete set of packages to install."""
    loaded = _Pool(request)
    loaded.consider_all_but(request.exclude)
    jobs = loaded.jobs()
    solver = loaded.pool.Solver()
    solver.set_flag(solv.Solver.SOLVER_FLAG_IGNORE_RECOMMENDED, int(request.ignore_recommends))
    problems = solver.solve(jobs)
    if problems:
        raise DepsolveError(describe_problems(problems))
    chosen = solver.transaction().newsolvables()
    packages = sorted((_resolved(loaded, s) for s in chosen), key=functools.cmp_to_key(_order))
    return SolveResult(tuple(packages), loaded.filelists_loaded)


def _order(a: ResolvedPackage, b: ResolvedPackage) -> int:
    """By name, then arch, then rpm's version order (5.10 after 5.9, as rpm sorts kernels)."""
    if (a.name, a.arch) != (b.name, b.arch):
        return -1 if (a.name, a.arch) < (b.name, b.arch) else 1
    return compare_evr((a.epoch, a.version, a.release), (b.epoch, b.version, b.release))


def describe_problems(problems: Sequence[solv.Problem]) -> str:
    """libsolv's problems in words, on one line."""
    texts = [str(problem) for problem in problems]
    if len(texts) == 1:
        return f"cannot solve: {texts[0]}"
    return "cannot solve: " + " ".join(f"problem {i}: {t}." for i, t in enumerate(texts, 1))


def _resolved(loaded: _Pool, s: solv.XSolvable) -> ResolvedPackage:
    repository = loaded.repos[s.repo.id]
    chk = s.lookup_checksum(solv.SOLVABLE_CHECKSUM)
    if chk is None:
        raise RepoError(f"repository {repository.name!r}: {s} has no checksum")
    location, _ = s.lookup_location()
    epoch, version, release = parse_evr(s.evr)
    size = s.lookup_num(solv.SOLVABLE_DOWNLOADSIZE)
    try:
        checksum = Checksum.parse(f"{ {'sha': 'sha1'}.get(chk.typestr(), chk.typestr())}:{chk.hex()}")
    except ValueError as e:
        raise RepoError(f"repository {repository.name!r}: {s}: {e}") from e
    repository.check_strength(checksum, str(s))
    return ResolvedPackage(
        name=s.name, epoch=epoch, version=version, release=release, arch=s.arch,
        repo=repository.name, url=repository.url_of(location), checksum=checksum,
        size=size or None,
    )
