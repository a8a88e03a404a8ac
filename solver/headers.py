"""The signed headers have the last word: the solution must hold by the packages' own headers.

Repository metadata (primary.xml) is a claim about the packages; each package's
header, whose signature rpm has checked, is what the package is. After fetching,
every chosen package's NEVRA (epoch included) must be the one the solver used, and
the set must be closed under the headers' own Requires (rich dependencies included)
and still answer every job of the definition. libsolv checks this from the headers
alone: a pool is built from them, marked installed, and verified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import rpm
import solv

from rpmextents.keyring import rpm_bindings
from rpmextents.nevra import Nevra
from solver.depsolve import SELECT_FLAGS, ResolvedPackage, describe_problems
from solver.errors import ComposeFetchError
from solver.keys import RepoKeyring


@dataclass(frozen=True)
class Signed:
    """A fetched package and its (signature-checked) header."""

    package: ResolvedPackage
    header: rpm.hdr


def read_header(path: Path, keyring: RepoKeyring | None, label: str) -> rpm.hdr:
    """The header of an RPM, signature checked with `keyring` when the repository has one."""
    if keyring is not None:
        return keyring.check(path, label)
    ts = rpm_bindings().TransactionSet()  # loaded through rpmextents: rpm's own log stays quiet
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES)  # no key to check against; digests still count
    with open(path, "rb") as f:
        try:
            return ts.hdrFromFdno(f.fileno())
        except rpm.error as e:
            raise ComposeFetchError(f"{label}: unreadable package header: {e}") from e


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def check_nevra(item: Signed) -> None:
    """Refuse a package whose header is not the package the metadata described."""
    h, p = item.header, item.package
    epoch = h[rpm.RPMTAG_EPOCH]
    actual = (_text(h[rpm.RPMTAG_NAME]), int(epoch) if epoch is not None else 0,
              _text(h[rpm.RPMTAG_VERSION]), _text(h[rpm.RPMTAG_RELEASE]), _text(h[rpm.RPMTAG_ARCH]))
    claimed = (p.name, p.epoch or 0, p.version, p.release, p.arch)
    if actual != claimed:
        name, e, v, r, a = actual
        signed = str(Nevra(name, e or None, v, r, a))
        what = "epoch" if actual[0:1] + actual[2:] == claimed[0:1] + claimed[2:] else "NEVRA"
        raise ComposeFetchError(f"{p.nevra}: the repository metadata lies about the {what}: the "
                         f"signed header of {p.url.rsplit('/', 1)[-1]} is {signed}")


def _dep(pool: solv.Pool, name: str, flags: int, evr: str) -> int:
    if name.startswith("("):
        dep = pool.parserpmrichdep(name)
        return int(dep.id) if dep is not None else int(pool.str2id(name))
    rel = ((solv.REL_LT if flags & rpm.RPMSENSE_LESS else 0)
           | (solv.REL_GT if flags & rpm.RPMSENSE_GREATER else 0)
           | (solv.REL_EQ if flags & rpm.RPMSENSE_EQUAL else 0))
    nid = pool.str2id(name)
    return int(pool.rel2id(nid, pool.str2id(evr), rel)) if rel and evr else int(nid)


def _deps(h: rpm.hdr, names: int, flags: int, versions: int) -> list[tuple[str, int, str]]:
    return [(_text(n), int(f), _text(v)) for n, f, v in
            zip(h[names] or [], h[flags] or [], h[versions] or [], strict=False)]


def _add(pool: solv.Pool, repo: solv.Repo, h: rpm.hdr) -> None:
    s = repo.add_solvable()
    s.name = _text(h[rpm.RPMTAG_NAME])
    epoch = h[rpm.RPMTAG_EPOCH]
    s.evr = (f"{epoch}:" if epoch else "") + f"{_text(h[rpm.RPMTAG_VERSION])}-{_text(h[rpm.RPMTAG_RELEASE])}"
    s.arch = _text(h[rpm.RPMTAG_ARCH])
    s.add_deparray(solv.SOLVABLE_PROVIDES, pool.rel2id(s.nameid, s.evrid, solv.REL_EQ))
    for name, flags, evr in _deps(h, rpm.RPMTAG_PROVIDENAME, rpm.RPMTAG_PROVIDEFLAGS,
                                  rpm.RPMTAG_PROVIDEVERSION):
        s.add_deparray(solv.SOLVABLE_PROVIDES, _dep(pool, name, flags, evr))
    for path in h[rpm.RPMTAG_FILENAMES] or []:
        s.add_deparray(solv.SOLVABLE_PROVIDES, pool.str2id(_text(path)))
    for name, flags, evr in _deps(h, rpm.RPMTAG_REQUIRENAME, rpm.RPMTAG_REQUIREFLAGS,
                                  rpm.RPMTAG_REQUIREVERSION):
        if flags & rpm.RPMSENSE_RPMLIB or name.startswith("rpmlib("):
            continue  # rpm's own features, not packages
        s.add_deparray(solv.SOLVABLE_REQUIRES, _dep(pool, name, flags, evr))
    for tag, key in ((rpm.RPMTAG_CONFLICTNAME, solv.SOLVABLE_CONFLICTS),
                     (rpm.RPMTAG_OBSOLETENAME, solv.SOLVABLE_OBSOLETES)):
        base = {rpm.RPMTAG_CONFLICTNAME: (rpm.RPMTAG_CONFLICTFLAGS, rpm.RPMTAG_CONFLICTVERSION),
                rpm.RPMTAG_OBSOLETENAME: (rpm.RPMTAG_OBSOLETEFLAGS, rpm.RPMTAG_OBSOLETEVERSION)}[tag]
        for name, flags, evr in _deps(h, tag, *base):
            s.add_deparray(key, _dep(pool, name, flags, evr))


def check_closure(arch: str, jobs: Sequence[str], items: Sequence[Signed]) -> None:
    """Refuse a set whose own headers leave a Requires or a job of the definition unmet."""
    pool = solv.Pool()
    pool.setdisttype(solv.Pool.DISTTYPE_RPM)
    pool.setarch(arch)
    pool.set_flag(solv.Pool.POOL_FLAG_IMPLICITOBSOLETEUSESCOLORS, 1)
    repo = pool.add_repo("signed-headers")
    for item in items:
        _add(pool, repo, item.header)
    repo.internalize()
    pool.installed = repo
    pool.addfileprovides()
    pool.createwhatprovides()
    unmet = [spec for spec in jobs if pool.select(spec, SELECT_FLAGS | (
        solv.Selection.SELECTION_FILELIST if spec.startswith("/") else 0)).isempty()]
    if unmet:
        raise ComposeFetchError(f"the signed headers of the chosen packages provide no {unmet[0]!r}; "
                         "the repository metadata claims a Provides the packages do not have")
    broken = [s for s in repo.solvables_iter() if _unmet(pool, s)]
    if broken:
        raise ComposeFetchError(f"{broken[0]}: its signed header requires {_unmet(pool, broken[0])}, "
                         "which no chosen package provides; the repository metadata left it out")
    solver = pool.Solver()
    problems = solver.solve([pool.Job(solv.Job.SOLVER_SOLVABLE_ALL | solv.Job.SOLVER_VERIFY, 0)])
    if problems:
        raise ComposeFetchError("the signed headers disagree with the repository metadata: "
                         + describe_problems(problems).removeprefix("cannot solve: ")
                         + " (the metadata left out a dependency)")


def _unmet(pool: solv.Pool, s: solv.XSolvable) -> str | None:
    """A plain (non-rich) Requires of `s` nothing in the pool provides (verify may not say)."""
    for dep in s.lookup_deparray(solv.SOLVABLE_REQUIRES):
        text = str(dep)
        if not text.startswith("(") and not pool.whatprovides(dep.id):
            return text
    return None
