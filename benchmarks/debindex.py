"""Debian's package index as rpm-md metadata, for the solve benchmark.

Turns apt's Packages list for bookworm main amd64 (about 63,000 packages with
their real dependencies) into `repodata/primary.xml.gz`, an empty
`filelists.xml.gz` and `repomd.xml`. Dependencies are translated as for the
corpus (benchmarks.debian): versions become epoch:version-release, `a | b`
becomes `(a or b)`, Breaks join Conflicts. The `location` of each package is
its Debian pool path: the metadata is for solving, nothing is downloaded.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from benchmarks.debian import (
    APT_LISTS,
    DebPackage,
    Dependency,
    Sense,
    parse_stanzas,
    read_index,
    unversioned_provides,
)

MAIN_LIST = "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"

FLAG_NAMES = {
    int(Sense.EQUAL): "EQ", int(Sense.LESS): "LT", int(Sense.LESS | Sense.EQUAL): "LE",
    int(Sense.GREATER): "GT", int(Sense.GREATER | Sense.EQUAL): "GE",
}


def split_evr(evr: str) -> tuple[str, str, str | None]:
    """'E:V-R' into (epoch, version, release or None)."""
    epoch, sep, rest = evr.partition(":")
    if not sep:
        epoch, rest = "0", evr
    version, sep, release = rest.rpartition("-")
    if not sep:
        return epoch, rest, None
    return epoch, version, release


def _entry(dep: Dependency) -> str:
    attrs = [f"name={quoteattr(dep.name)}"]
    sense = FLAG_NAMES.get(dep.flags & 0xE)
    if sense and dep.version:
        e, v, r = split_evr(dep.version)
        attrs += [f'flags="{sense}"', f'epoch="{e}"', f"ver={quoteattr(v)}"]
        if r is not None:
            attrs.append(f"rel={quoteattr(r)}")
    if dep.flags & Sense.SCRIPT_PRE:
        attrs.append('pre="1"')
    return f"<rpm:entry {' '.join(attrs)}/>"


def _deps(tag: str, deps: Iterable[Dependency]) -> str:
    entries = "".join(_entry(d) for d in deps)
    return f"<rpm:{tag}>{entries}</rpm:{tag}>" if entries else ""


def _pkgid(pkg: DebPackage) -> str:
    return pkg.fields.get("SHA256") or hashlib.sha256(
        f"{pkg.name}_{pkg.version}_{pkg.arch}".encode()).hexdigest()


def package_xml(pkg: DebPackage, virtual: frozenset[str] = frozenset()) -> str:
    """One <package> element of primary.xml for a Debian stanza."""
    v = pkg.version
    size = pkg.fields.get("Size", "0")
    return (
        '<package type="rpm">'
        f"<name>{escape(pkg.name)}</name><arch>{pkg.rpm_arch}</arch>"
        f'<version epoch="{v.epoch}" ver={quoteattr(v.rpm_version)} rel={quoteattr(v.rpm_release)}/>'
        f'<checksum type="sha256" pkgid="YES">{_pkgid(pkg)}</checksum>'
        f"<summary>{escape(pkg.summary)}</summary><description>{escape(pkg.description)}</description>"
        f"<packager>{escape(pkg.fields.get('Maintainer', ''))}</packager>"
        f"<url>{escape(pkg.fields.get('Homepage', ''))}</url>"
        '<time file="0" build="0"/>'
        f'<size package="{size}" installed="{pkg.installed_size}" archive="{pkg.installed_size}"/>'
        f"<location href={quoteattr(pkg.fields.get('Filename', pkg.name + '.deb'))}/>"
        "<format><rpm:license>Debian</rpm:license><rpm:vendor>Debian</rpm:vendor>"
        f"<rpm:group>{escape(pkg.fields.get('Section', 'Unspecified'))}</rpm:group>"
        "<rpm:buildhost>debian</rpm:buildhost><rpm:sourcerpm/>"
        '<rpm:header-range start="0" end="0"/>'
        + _deps("provides", _self_provided(pkg))
        + _deps("requires", pkg.requires())
        + _deps("conflicts", pkg.conflicts(virtual))
        + _deps("recommends", pkg.recommends())
        + _deps("suggests", pkg.suggests())
        + _deps("enhances", pkg.enhances())
        + "</format></package>\n"
    )


def _self_provided(pkg: DebPackage) -> list[Dependency]:
    own = Dependency(pkg.name, int(Sense.EQUAL), f"{pkg.version.epoch}:{pkg.version.rpm_version}"
                     f"-{pkg.version.rpm_release}")
    return [own, *pkg.provides()[1:]]


def _write_gz(path: Path, text: str) -> tuple[str, int, str, int]:
    raw = text.encode("utf-8")
    packed = gzip.compress(raw, compresslevel=6, mtime=0)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(packed)
    os.replace(tmp, path)
    return hashlib.sha256(packed).hexdigest(), len(packed), hashlib.sha256(raw).hexdigest(), len(raw)


def write_rpmmd(pkgs: list[DebPackage], out: Path) -> Path:
    """Write out/repodata/{primary,filelists}.xml.gz and repomd.xml; returns the repodata path."""
    repodata = out / "repodata"
    repodata.mkdir(parents=True, exist_ok=True)
    n = len(pkgs)
    virtual = unversioned_provides(pkgs)
    primary = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<metadata xmlns="http://linux.duke.edu/metadata/common" '
        f'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="{n}">\n'
        + "".join(package_xml(p, virtual) for p in pkgs)
        + "</metadata>\n"
    )
    filelists = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<filelists xmlns="http://linux.duke.edu/metadata/filelists" packages="{n}">\n'
        + "".join(
            f'<package pkgid="{_pkgid(p)}" name={quoteattr(p.name)} arch="{p.rpm_arch}">'
            f'<version epoch="{p.version.epoch}" ver={quoteattr(p.version.rpm_version)} '
            f"rel={quoteattr(p.version.rpm_release)}/></package>\n"
            for p in pkgs
        )
        + "</filelists>\n"
    )
    now = int(time.time())
    entries = []
    for kind, text in (("primary", primary), ("filelists", filelists)):
        sha, size, open_sha, open_size = _write_gz(repodata / f"{kind}.xml.gz", text)
        entries.append(
            f'<data type="{kind}"><checksum type="sha256">{sha}</checksum>'
            f'<open-checksum type="sha256">{open_sha}</open-checksum>'
            f'<location href="repodata/{kind}.xml.gz"/><timestamp>{now}</timestamp>'
            f"<size>{size}</size><open-size>{open_size}</open-size></data>"
        )
    repomd = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<repomd xmlns="http://linux.duke.edu/metadata/repo" '
        'xmlns:rpm="http://linux.duke.edu/metadata/rpm">'
        f"<revision>{now}</revision>" + "".join(entries) + "</repomd>\n"
    )
    tmp = repodata / "repomd.xml.tmp"
    tmp.write_text(repomd)
    os.replace(tmp, repodata / "repomd.xml")
    return repodata


def read_packages(text: str, arches: tuple[str, ...] = ("amd64", "all")) -> list[DebPackage]:
    """Every stanza of a Packages file for the given architectures, in file order."""
    return [p for p in map(DebPackage.from_stanza, parse_stanzas(text)) if p.arch in arches]


def main_index_text() -> str:
    """apt's bookworm main amd64 Packages list, decompressed."""
    found = sorted(APT_LISTS.glob(MAIN_LIST + "*"))
    if not found:
        raise FileNotFoundError(f"no {MAIN_LIST} under {APT_LISTS}: run apt-get update")
    return read_index(found[0])


def build_index_repo(out: Path) -> tuple[Path, int]:
    """rpm-md metadata for Debian's main index in out/ (cached by the index's digest); (repo, count)."""
    text = main_index_text()
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    repo = out / f"debian-index-{key}"
    if (repo / "repodata" / "repomd.xml").exists():
        count = int((repo / "count").read_text())
        return repo, count
    pkgs = read_packages(text)
    tmp = repo.with_name(repo.name + ".partial")
    write_rpmmd(pkgs, tmp)
    (tmp / "count").write_text(str(len(pkgs)))
    os.replace(tmp, repo)
    return repo, len(pkgs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.debindex",
                                     description="Debian's Packages index as rpm-md metadata.")
    parser.add_argument("-o", "--output", type=Path, required=True, help="directory for the repo")
    args = parser.parse_args(argv)
    repo, count = build_index_repo(args.output)
    print(f"{repo}: {count} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
