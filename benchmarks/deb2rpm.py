"""Repackage one Debian .deb as an RPM, relocated the way merged-/usr distributions lay out files.

The file list, modes, owners, mtimes, symlinks and hardlinks come from the .deb's
data.tar; /bin, /sbin, /lib, /lib32, /libx32 and /lib64 move under /usr (other
top-level directories such as /etc and /var stay), the kernel and its config and
System.map move from /boot to /usr/lib/modules/KVER/ (vmlinuz, config, System.map), Debian's conffiles become
%config(noreplace), files under /usr/share/doc become %doc, and the relationship
fields become Provides/Requires/Conflicts/Recommends/Suggests/Enhances.
Maintainer scripts are not carried over: they are Debian-specific and rpmimg
never runs scriptlets anyway; a kernel package gets the module indexes its postinst would
make (benchmarks.kmodindex).
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import zstandard

from benchmarks.debian import DebianError, DebPackage, Dependency, Sense, parse_stanzas
from benchmarks.kmodindex import with_module_indexes
from benchmarks.rpmwriter import FileEntry, FileFlag, PackageSpec

log = logging.getLogger(__name__)

MERGED_DIRS = ("bin", "sbin", "lib", "lib32", "libx32", "lib64")


@dataclass(frozen=True)
class DebArchive:
    """A .deb split into its control stanza, conffiles and data.tar bytes (decompressed)."""

    control: dict[str, str]
    conffiles: frozenset[str]
    data_tar: bytes

    @property
    def package(self) -> DebPackage:
        return DebPackage.from_stanza(self.control)


def _ar_members(blob: bytes, where: str) -> Iterator[tuple[str, bytes]]:
    if not blob.startswith(b"!<arch>\n"):
        raise DebianError(f"{where}: not an ar archive (bad magic {blob[:8]!r})")
    pos = 8
    while pos + 60 <= len(blob):
        head = blob[pos:pos + 60]
        if head[58:60] != b"`\n":
            raise DebianError(f"{where}: bad ar member header at offset {pos}")
        name = head[:16].decode("ascii").strip().rstrip("/")
        size = int(head[48:58].decode("ascii").strip())
        start = pos + 60
        if start + size > len(blob):
            raise DebianError(f"{where}: ar member {name} truncated at offset {start}")
        yield name, blob[start:start + size]
        pos = start + size + (size & 1)


def _decompress(name: str, data: bytes) -> bytes:
    if name.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    if name.endswith(".xz"):
        return lzma.decompress(data)
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".bz2"):
        return bz2.decompress(data)
    return data


def read_deb(path: Path) -> DebArchive:
    """Parse a .deb (ar of debian-binary, control.tar.*, data.tar.*)."""
    members = dict(_ar_members(path.read_bytes(), str(path)))
    control_name = next((n for n in members if n.startswith("control.tar")), None)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if control_name is None or data_name is None:
        raise DebianError(f"{path}: no control.tar or data.tar member")
    control_tar = _decompress(control_name, members[control_name])
    stanza: dict[str, str] | None = None
    conffiles: frozenset[str] = frozenset()
    with tarfile.open(fileobj=io.BytesIO(control_tar)) as tf:
        for m in tf.getmembers():
            base = posixpath.basename(m.name)
            f = tf.extractfile(m) if m.isfile() else None
            if f is None:
                continue
            if base == "control":
                stanza = next(parse_stanzas(f.read().decode("utf-8", "replace")), None)
            elif base == "conffiles":
                conffiles = frozenset(
                    ln.strip() for ln in f.read().decode("utf-8", "surrogateescape").splitlines()
                    if ln.strip().startswith("/")
                )
    if stanza is None:
        raise DebianError(f"{path}: control.tar has no control file")
    return DebArchive(stanza, conffiles, _decompress(data_name, members[data_name]))


# Debian's kernel files in /boot, where openSUSE and Fedora ship them: beside the modules.
_BOOT_FILES = {"vmlinuz-": "vmlinuz", "config-": "config", "System.map-": "System.map"}


def relocate(path: str) -> str:
    """/bin/x -> /usr/bin/x (and /sbin, /lib*), /boot/vmlinuz-KVER -> /usr/lib/modules/KVER/vmlinuz.

    Anything else is unchanged. Path is absolute.
    """
    top, _, rest = path.lstrip("/").partition("/")
    if top == "boot" and "/" not in rest:
        for prefix, name in _BOOT_FILES.items():
            if rest.startswith(prefix) and len(rest) > len(prefix):
                return f"/usr/lib/modules/{rest[len(prefix):]}/{name}"
    if top in MERGED_DIRS:
        return f"/usr/{top}/{rest}".rstrip("/")
    return path


def relocate_link(link_path: str, target: str) -> str:
    """A symlink's target after its link and the target moved under /usr, still resolving the same."""
    if target.startswith("/"):
        return relocate(target)
    old_abs = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    new_link, new_abs = relocate(link_path), relocate(old_abs)
    if new_link == link_path and new_abs == old_abs:
        return target  # nothing moved: keep the packager's spelling
    rel = posixpath.relpath(new_abs, posixpath.dirname(new_link))
    return rel


def _entries(archive: DebArchive) -> Iterator[FileEntry]:
    with tarfile.open(fileobj=io.BytesIO(archive.data_tar)) as tf:
        link_keys: dict[str, str] = {}
        for m in tf:
            orig = "/" + posixpath.normpath(m.name).lstrip("./").lstrip("/")
            if orig == "/" or m.name in (".", "./"):
                continue
            path = relocate(orig)
            flags = FileFlag.NONE
            if orig in archive.conffiles:
                flags |= FileFlag.CONFIG | FileFlag.NOREPLACE
            elif path.startswith("/usr/share/doc/"):
                flags |= FileFlag.DOC
            base = FileEntry(path=path, mode=m.mode, user=m.uname or "root",
                             group=m.gname or "root", mtime=int(m.mtime), flags=int(flags))
            if m.isdir():
                yield replace(base, mode=0o040000 | m.mode)
            elif m.issym():
                yield replace(base, mode=0o120777, linkto=relocate_link(orig, m.linkname))
            elif m.islnk():
                target = relocate("/" + posixpath.normpath(m.linkname).lstrip("./").lstrip("/"))
                key = link_keys.setdefault(target, target)
                yield replace(base, mode=0o100000 | m.mode, hardlink_key=key,
                              data=b"")  # data filled in by hardlink resolution below
            elif m.isreg():
                f = tf.extractfile(m)
                assert f is not None
                yield replace(base, mode=0o100000 | m.mode, data=f.read())
            elif m.ischr() or m.isblk():
                kind = 0o020000 if m.ischr() else 0o060000
                yield replace(base, mode=kind | m.mode, rdev=(m.devmajor << 8) | m.devminor)
            elif m.isfifo():
                yield replace(base, mode=0o010000 | m.mode)
            else:
                raise DebianError(f"{m.name}: unsupported tar member type {m.type!r}")


def file_entries(archive: DebArchive) -> list[FileEntry]:
    """The relocated file list; hardlink sets share a key and the content; merged-/usr clashes
    dropped; a kernel's module indexes added."""
    by_path: dict[str, FileEntry] = {}
    for e in _entries(archive):
        old = by_path.get(e.path)
        if old is not None:
            if not (old.mode & 0o170000 == e.mode & 0o170000 == 0o040000):
                log.warning("%s: %s exists both in / and /usr; keeping the first",
                            archive.package.name, e.path)
            continue
        by_path[e.path] = e
    # A tar hardlink names its target; give the target the same key and every member its data.
    keyed = {e.hardlink_key for e in by_path.values() if e.hardlink_key is not None}
    out = []
    for e in by_path.values():
        if e.path in keyed and e.hardlink_key is None:
            e = replace(e, hardlink_key=e.path)
        out.append(e)
    data = {e.path: e.data for e in out if e.hardlink_key == e.path}
    out = [replace(e, data=data[e.hardlink_key]) if e.hardlink_key in data else e for e in out]
    return with_module_indexes(out)  # what the kernel's postinst would make


def package_spec(archive: DebArchive, *, release_suffix: str = "",
                 files: list[FileEntry] | None = None,
                 virtual: frozenset[str] = frozenset()) -> PackageSpec:
    """The rpm PackageSpec for a .deb: same name, version mapped, dependencies translated."""
    pkg = archive.package
    release = pkg.version.rpm_release + release_suffix
    source = pkg.fields.get("Source", pkg.name).split(" ")[0]
    epoch = f"{pkg.version.epoch}:" if pkg.version.epoch else ""
    # rpmbuild's self-provide carries the full EVR; the Debian Provides follow it.
    own = Dependency(pkg.name, int(Sense.EQUAL), f"{epoch}{pkg.version.rpm_version}-{release}")
    provides = [own, *pkg.provides()[1:]]
    return PackageSpec(
        name=pkg.name,
        epoch=pkg.version.epoch or None,
        version=pkg.version.rpm_version,
        release=release,
        arch=pkg.rpm_arch,
        summary=pkg.summary,
        description=pkg.description,
        license="Debian",  # the real terms are in /usr/share/doc/*/copyright
        group=pkg.fields.get("Section", "Unspecified"),
        url=pkg.fields.get("Homepage", ""),
        vendor="Debian (repackaged by rpmimg benchmarks)",
        packager=pkg.fields.get("Maintainer", ""),
        buildtime=max((f.mtime for f in (files or [])), default=0),
        sourcerpm=f"{source}-{pkg.version.rpm_version}-{release}.src.rpm",
        provides=provides,
        requires=pkg.requires(),
        conflicts=pkg.conflicts(virtual),
        recommends=pkg.recommends(),
        suggests=pkg.suggests(),
        enhances=pkg.enhances(),
        files=tuple(files if files is not None else file_entries(archive)),
    )
