"""libsolv solving from createrepo_c repositories, checked against testsolv on the same job."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from fixtures.build import PackageSpec
from fixtures.repos import (
    build_repo,
    createrepo,
    package,
    run_testsolv,
    solv_testcase,
    solver_universe,
    updates_universe,
)
from solver.definition import RepoSource
from solver.depsolve import ResolvedPackage, SolveRequest, SolveResult, _order, solve
from solver.errors import DepsolveError, RepoError
from solver.fetch import Checksum
from solver.repodata import Repository

pytestmark = pytest.mark.skipif(
    shutil.which("rpmbuild") is None or shutil.which("createrepo_c") is None
    or shutil.which("testsolv") is None,
    reason="needs rpmbuild, createrepo_c and testsolv",
)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("solver-repos")
    build_repo(solver_universe(), root / "main")
    build_repo(updates_universe(), root / "updates")
    return root


def open_repo(root: Path, name: str, priority: int = 99) -> Repository:
    return Repository.open(RepoSource(name, (root / name).as_uri() + "/", priority=priority))


def run(root: Path, packages: Sequence[str], *, arch: str = "x86_64", repos: Sequence[str] = ("main",),
        **kw: object) -> SolveResult:
    request = SolveRequest(arch=arch, packages=tuple(packages),
                           repos=tuple(open_repo(root, r) for r in repos), **kw)  # type: ignore[arg-type]
    return solve(request)


def nevras(result: SolveResult) -> set[str]:
    return {p.nevra for p in result.packages}


def oracle(jobs: Sequence[str], *, arch: str = "x86_64", updates: bool = False,
           ignore_recommends: bool = True) -> set[str]:
    universe: list[tuple[str, Sequence[PackageSpec]]] = [("main", solver_universe())]
    if updates:
        universe.append(("updates", updates_universe()))
    return run_testsolv(solv_testcase(universe, arch, jobs, ignore_recommends=ignore_recommends))


MV = "multiversion provides multiversion(kernel)"

CASES = [
    # (definition packages, testsolv jobs)
    pytest.param(["bash"], ["install name bash"], id="chain"),
    pytest.param(["app"], ["install name app"], id="virtual-provide-and-file-deps"),
    pytest.param(["libfoo.so.1()(64bit)"], ["install provides libfoo.so.1()(64bit)"],
                 id="capability"),
    pytest.param(["/usr/share/app-data/table"], ["install provides /usr/share/app-data/table"],
                 id="file-only-in-filelists"),
    pytest.param(["net-user", "newnet"], ["install name net-user", "install name newnet"],
                 id="obsoletes"),
    pytest.param(["kernel-default = 6.0-1", "kmp-wifi"],
                 [MV, "install provides kernel-default = 6.0-1", "install name kmp-wifi"],
                 id="multiversion-kernel"),
    pytest.param(["legacy-tool", "libfoo"], ["install name legacy-tool", "install name libfoo"],
                 id="i686-in-x86_64"),
    pytest.param(["scripted", "postfix"], ["install name scripted", "install name postfix"],
                 id="scriptlet"),
]


@pytest.mark.parametrize(("packages", "jobs"), CASES)
def test_solution_matches_testsolv(repos: Path, packages: list[str], jobs: list[str]) -> None:
    result = run(repos, packages)
    expected = oracle([MV, *jobs] if MV not in jobs else jobs)
    assert nevras(result) == expected


def test_dependency_closure_by_hand(repos: Path) -> None:
    # app needs libfoo → glibc → filesystem, /bin/sh from bash, an mta and app-data's file.
    got = nevras(run(repos, ["app"]))
    assert {"app-1.0-1.x86_64", "libfoo-1.0-1.x86_64", "glibc-2.36-1.x86_64",
            "filesystem-1.0-1.noarch", "bash-5.2-1.x86_64", "app-data-1.0-1.noarch"} <= got
    assert len(got & {"postfix-3.7-1.x86_64", "sendmail-8.17-1.x86_64"}) == 1
    assert not any(n.endswith(".i686") for n in got)
    assert "app-docs-1.0-1.noarch" not in got  # recommends are ignored by default


def test_recommends_when_asked(repos: Path) -> None:
    got = nevras(run(repos, ["app"], ignore_recommends=False))
    assert "app-docs-1.0-1.noarch" in got
    assert got == oracle([MV, "install name app"], ignore_recommends=False)


def test_filelists_loaded_only_when_needed(repos: Path) -> None:
    assert not run(repos, ["bash"]).filelists_loaded  # /bin/sh is in primary
    assert run(repos, ["app"]).filelists_loaded  # /usr/share/app-data/table is not


def test_multiversion_kernels_side_by_side(repos: Path) -> None:
    got = nevras(run(repos, ["kernel-default = 6.0-1", "kmp-wifi"]))
    assert {"kernel-default-5.0-1.x86_64", "kernel-default-6.0-1.x86_64"} <= got


def test_without_multiversion_the_kernels_clash(repos: Path) -> None:
    with pytest.raises(DepsolveError, match="kernel-uname-r"):
        run(repos, ["kernel-default = 6.0-1", "kmp-wifi"], multiversion=())


def test_conflict_is_a_problem_in_words(repos: Path) -> None:
    with pytest.raises(DepsolveError) as e:
        run(repos, ["postfix", "sendmail"])
    assert "postfix-3.7-1.x86_64 conflicts with sendmail" in str(e.value)


def test_missing_dependency_in_words(repos: Path) -> None:
    with pytest.raises(DepsolveError) as e:
        run(repos, ["broken"])
    assert str(e.value) == (
        "cannot solve: nothing provides libmissing.so.2()(64bit) needed by broken-1.0-1.x86_64"
    )


def test_unknown_package_named(repos: Path) -> None:
    with pytest.raises(DepsolveError, match="no package provides 'nosuch', '/usr/bin/nosuch'"):
        run(repos, ["bash", "nosuch", "/usr/bin/nosuch"])


def test_exclude_hides_a_provider(repos: Path) -> None:
    got = nevras(run(repos, ["app"], exclude=("send*",)))
    assert "postfix-3.7-1.x86_64" in got
    with pytest.raises(DepsolveError, match="sendmail"):
        run(repos, ["sendmail"], exclude=("send*",))


def test_i686_image_never_takes_x86_64(repos: Path) -> None:
    got = nevras(run(repos, ["legacy-tool"], arch="i686"))
    assert got == {"legacy-tool-1.0-1.i686", "libfoo-1.0-1.i686", "glibc-2.36-1.i686",
                   "filesystem-1.0-1.noarch"}
    assert got == oracle(["install name legacy-tool"], arch="i686")
    with pytest.raises(DepsolveError):
        run(repos, ["app"], arch="i686")


def test_newer_version_in_second_repo_wins(repos: Path) -> None:
    result = run(repos, ["bash", "libfoo"], repos=("main", "updates"))
    got = nevras(result)
    assert "libfoo-1.1-1.x86_64" in got and "filesystem-1:1.0-1.noarch" in got
    assert got == oracle([MV, "install name bash", "install name libfoo"], updates=True)
    fs = next(p for p in result.packages if p.name == "filesystem")
    assert (fs.epoch, fs.version, fs.release, fs.repo) == (1, "1.0", "1", "updates")
    assert fs.url.startswith((repos / "updates").as_uri())


def test_newer_version_appearing_in_same_repo(tmp_path: Path) -> None:
    old = package("tool", "1.0", files=("/usr/bin/tool",))
    build_repo([old], tmp_path / "r")
    assert nevras(run(tmp_path, ["tool"], repos=("r",))) == {"tool-1.0-1.noarch"}
    build_repo([package("tool", "1.10", files=("/usr/bin/tool",))], tmp_path / "r")
    assert nevras(run(tmp_path, ["tool"], repos=("r",))) == {"tool-1.10-1.noarch"}


@pytest.mark.parametrize("compress", ["xz", "bz2", "zst"])
def test_compressed_metadata(tmp_path: Path, repos: Path, compress: str) -> None:
    shutil.copytree(repos / "main" / "Packages", tmp_path / "main" / "Packages")
    createrepo(tmp_path / "main", compress)
    assert any(p.name.endswith(f"primary.xml.{compress}")
               for p in (tmp_path / "main" / "repodata").iterdir())
    assert nevras(run(tmp_path, ["app"])) == nevras(run(repos, ["app"]))


def test_checksums_and_sizes_come_from_metadata(repos: Path) -> None:
    import hashlib

    for p in run(repos, ["app"]).packages:
        path = Path(p.url.removeprefix("file://"))
        assert hashlib.new(p.checksum.algo, path.read_bytes()).hexdigest() == p.checksum.hex
        assert p.size == path.stat().st_size


def test_corrupt_metadata_is_a_repo_error(tmp_path: Path, repos: Path) -> None:
    shutil.copytree(repos / "main", tmp_path / "main")
    primary = next((tmp_path / "main" / "repodata").glob("*primary.xml.gz"))
    primary.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(RepoError, match="primary metadata"):
        run(tmp_path, ["app"])


def test_missing_repository_is_a_repo_error(tmp_path: Path) -> None:
    with pytest.raises(RepoError, match=r"repomd\.xml"):
        run(tmp_path, ["app"], repos=("nothere",))


def test_solution_order_is_rpms_version_order() -> None:
    """Manifest order is extraction order, so versions side by side sort as rpm sorts them."""
    def p(name: str, version: str, epoch: int | None = None, arch: str = "x86_64") -> ResolvedPackage:
        return ResolvedPackage(name, epoch, version, "1", arch, "main", "x.rpm", Checksum("sha256", "0"), 1)

    given = [p("kernel", "6.10"), p("kernel", "6.9"), p("kernel", "6.9~rc1"), p("a", "1", arch="noarch"),
             p("kernel", "5.0", epoch=1), p("a", "2")]
    ordered = sorted(given, key=functools.cmp_to_key(_order))
    assert [(x.name, x.arch, x.version) for x in ordered] == [
        ("a", "noarch", "1"), ("a", "x86_64", "2"), ("kernel", "x86_64", "6.9~rc1"),
        ("kernel", "x86_64", "6.9"), ("kernel", "x86_64", "6.10"), ("kernel", "x86_64", "5.0")]


def test_lower_priority_number_wins_as_in_zypper(repos: Path) -> None:
    """libfoo 1.1 in updates is newer, but main's priority number is lower: main's 1.0 wins."""
    def chosen(main: int, updates: int) -> set[str]:
        request = SolveRequest(arch="x86_64", packages=("libfoo",),
                               repos=(open_repo(repos, "main", main), open_repo(repos, "updates", updates)))
        return {p.nevra for p in solve(request).packages if p.nevra.startswith("libfoo-")}
    assert chosen(10, 99) == {"libfoo-1.0-1.x86_64"}
    assert chosen(99, 10) == {"libfoo-1.1-1.x86_64"}
    assert chosen(99, 99) == {"libfoo-1.1-1.x86_64"}  # equal: the best version
