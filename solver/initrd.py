"""Kernels and initrds made on the server, published with the image, pinned by its manifest.

For every kernel of the image (`/usr/lib/modules/KVER/vmlinuz`) compose runs the
image's `depmod` and builds a generic (not host-only) initrd with the image's `dracut`
in a sandbox on the composed tree (solver.boottree). Both files go into
`pool/boot/`, named by their sha256, and the manifest's `boot` section pins them.

An initrd is rebuilt only when its inputs changed. The inputs are the header digests
of the packages that provided any file in it, of those that own dracut's modules or
configuration, and of the kernel's package, with the dracut arguments. They are
recorded beside it (`pool/boot/<inputs>-initrd-KVER.json`, with the kernel and initrd
it made); the next compose recomputes the digest over the same package names in the new
image, and reuses those files when it is the same (the previous version's record first,
then any other of the output's records for that kernel version).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from host.run import CommandError, run
from imagespec.manifest import BootEntry, BootFile, ImageManifest, kernel_version_problem
from imagespec.published import BOOT, boot_inputs_path, boot_path, location_of
from rpmextents.files import package_files
from solver.boottree import image_root, run_in
from solver.errors import PublishError
from solver.publish import ImageStore

KERNEL = re.compile(r"/usr/lib/modules/([A-Za-z0-9_+][A-Za-z0-9._+~-]{0,127})/vmlinuz")
# What boots a deployment: systemd in the initrd mounts root and /usr from root= and
# mount.usr= (its fstab generator); `kernel-modules` makes it generic (every storage
# driver); `rpmimg` (packaging/dracut) is added when the image has it.
DRACUT_MODULES = ("systemd", "systemd-initrd", "dracut-systemd", "base", "fs-lib",
                  "rootfs-block", "udev-rules", "btrfs", "usrmount", "shutdown", "kernel-modules")
DRACUT_ARGS = ("--no-hostonly", "--no-hostonly-cmdline", "--no-early-microcode", "--gzip",
               "--reproducible", "--force", "--nofscks")
RPMIMG_DRACUT_MODULE = "usr/lib/dracut/modules.d/95rpmimg"
# Packages owning these shape every initrd even when none of their files is in it.
_DRACUT_CONFIG = ("/usr/lib/dracut/", "/etc/dracut.conf")
INPUTS_FORMAT = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ImagePackage:
    """A package of the image as this module needs it: its pool file and header digest.

    `name` is the package's NEVRA, so that multiversion packages (kernels) stay apart.
    """

    name: str
    path: Path
    header_sha256: str


def kernel_versions(files: dict[str, list[str]]) -> list[str]:
    """The kernel versions of an image, from each package's file list (by package name)."""
    found = {m.group(1) for paths in files.values() for p in paths if (m := KERNEL.fullmatch(p))}
    return sorted(found)


def missing_tools(files: dict[str, list[str]]) -> list[str]:
    """Which of dracut and depmod the image lacks (in /usr/bin or /usr/sbin, merged /usr)."""
    have = {_merged(p) for paths in files.values() for p in paths}
    return [tool for tool in ("dracut", "depmod")
            if not any(f"/usr/{d}/{tool}" in have for d in ("bin", "sbin"))]


def image_files(packages: Sequence[ImagePackage]) -> dict[str, list[str]]:
    """Each package's files that are not directories (every package lists /usr/bin...)."""
    return {p.name: [path for path, mode in package_files(p.path) if not stat.S_ISDIR(mode)]
            for p in packages}


def build_boot(store: ImageStore, packages: Sequence[ImagePackage],
               old: ImageManifest | None,
               step: Callable[[str], None] | None = None) -> tuple[BootEntry, ...]:
    """The boot entries of a new image: reused from `old` where inputs match, built otherwise."""
    files = image_files(packages)
    versions = kernel_versions(files)
    if not versions:
        return ()
    missing = missing_tools(files)
    if missing:
        # A kernel alone (a container base, a test image) boots nothing: publish no boot files.
        if step is not None:
            step(f"kernel {', '.join(versions)} without {' and '.join(missing)} in the image: "
                 "no initrd, no boot section")
        return ()
    for kver in versions:
        problem = kernel_version_problem(kver)
        if problem:
            raise PublishError(f"/usr/lib/modules/{kver}/vmlinuz: the kernel version {kver!r} {problem}")
    previous = {b.kernel_version: b for b in (old.boot if old else ())}
    entries: list[BootEntry] = []
    todo: list[str] = []
    for kver in versions:
        reused = _reusable(store, previous.get(kver), kver, packages, files)
        if reused is not None:
            entries.append(reused)
        else:
            todo.append(kver)
    if todo:
        if step is not None:
            step(f"building the initrd of {', '.join(todo)} with the image's dracut")
        entries.extend(_build(store, packages, files, todo))
    return tuple(sorted(entries, key=lambda b: b.kernel_version))


def _digests(packages: Sequence[ImagePackage]) -> dict[str, str]:
    return {p.name: p.header_sha256 for p in packages}


def _config_owners(files: dict[str, list[str]], kver: str) -> set[str]:
    kernel = f"/usr/lib/modules/{kver}/vmlinuz"
    return {name for name, paths in files.items()
            if any(p.startswith(_DRACUT_CONFIG) or p == kernel for p in paths)}


def inputs_digest(kver: str, names: Iterable[str], digests: dict[str, str]) -> str | None:
    """The inputs digest over these package names, or None if one is not in the image."""
    if any(n not in digests for n in names):
        return None
    record = {"format": INPUTS_FORMAT, "kernel_version": kver, "dracut": _dracut_argv(kver, True),
              "packages": {n: digests[n] for n in sorted(set(names))}}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _reusable(store: ImageStore, entry: BootEntry | None, kver: str,
              packages: Sequence[ImagePackage], files: dict[str, list[str]]) -> BootEntry | None:
    """A published kernel and initrd whose recorded inputs are this image's, if there is one.

    The previous version's are tried first, then every record for this kernel version
    in the pool (another image of the same output may have built it).
    """
    candidates = [entry.inputs] if entry is not None and entry.kernel_version == kver else []
    directory = store.output / BOOT
    if directory.is_dir():
        suffix = f"-initrd-{kver}.json"
        candidates += sorted(n[:64] for n in os.listdir(directory)
                             if n.endswith(suffix) and _HEX64.fullmatch(n[:64]))
    digests = _digests(packages)
    config = _config_owners(files, kver)
    for inputs in dict.fromkeys(candidates):
        recorded = _record(store, inputs, kver)
        if recorded is None:
            continue
        names, kernel, initrd = recorded
        if inputs_digest(kver, names | config, digests) == inputs:
            return BootEntry(kver, kernel, initrd, inputs)
    return None


def _record(store: ImageStore, inputs: str, kver: str) -> tuple[set[str], BootFile, BootFile] | None:
    """The packages, kernel and initrd a record names, if it is readable and its files are there."""
    try:
        data = json.loads((store.output / boot_inputs_path(inputs, kver)).read_bytes())
        names = {str(n) for n in data["packages"]}
        files = []
        for kind in ("vmlinuz", "initrd"):
            sha, size = str(data[kind]["sha256"]), int(data[kind]["size"])
            rel = boot_path(sha, kind, kver)
            if not _HEX64.fullmatch(sha) or not store.out.is_regular(rel) \
                    or (store.output / rel).stat().st_size != size:
                return None
            files.append(BootFile(location_of(rel), sha, size))
    except (OSError, ValueError, KeyError, TypeError, PublishError):
        return None  # no usable record: build again rather than guess
    return names, files[0], files[1]


def _dracut_argv(kver: str, with_rpmimg: bool) -> list[str]:
    modules = [*DRACUT_MODULES, *(("rpmimg",) if with_rpmimg else ())]
    return ["dracut", *DRACUT_ARGS, "--modules", " ".join(modules), "--kver", kver]


def _build(store: ImageStore, packages: Sequence[ImagePackage], files: dict[str, list[str]],
           versions: list[str]) -> list[BootEntry]:
    scratch = store.output / ".cache" / "boot"
    shutil.rmtree(scratch, ignore_errors=True)  # a killed compose's tree
    store.out.makedirs(".cache/boot")
    entries = []
    with image_root([p.path for p in packages], scratch) as root:
        with_rpmimg = (root / RPMIMG_DRACUT_MODULE).is_dir()
        for kver in versions:
            run_in(root, ["depmod", "-a", kver], f"depmod for kernel {kver}")
            argv = _dracut_argv(kver, with_rpmimg)
            run_in(root, [*argv, "/var/tmp/initrd"], f"dracut for kernel {kver}")
            initrd = root / "var/tmp/initrd"
            owners = _initrd_owners(initrd, files) | _config_owners(files, kver)
            digest = inputs_digest(kver, owners, _digests(packages))
            assert digest is not None  # every owner is a package of this image
            kernel_file = _publish(store, root / "usr/lib/modules" / kver / "vmlinuz", "vmlinuz", kver)
            initrd_file = _publish(store, initrd, "initrd", kver)
            record = {"format": INPUTS_FORMAT, "kernel_version": kver, "packages": sorted(owners),
                      "vmlinuz": {"sha256": kernel_file.sha256, "size": kernel_file.size},
                      "initrd": {"sha256": initrd_file.sha256, "size": initrd_file.size}}
            record_path = boot_inputs_path(digest, kver)
            if not store.out.exists(record_path):
                staged = f".cache/boot/.record-{os.getpid()}"
                with contextlib.suppress(FileNotFoundError):
                    store.out.unlink(staged)
                store.out.write(staged, (json.dumps(record, indent=1) + "\n").encode())
                store.out.replace(staged, record_path)
                store.pool.created.append(record_path)
            entries.append(BootEntry(kver, kernel_file, initrd_file, digest))
    return entries


def _initrd_owners(initrd: Path, files: dict[str, list[str]]) -> set[str]:
    """Names of the packages that own a file in the (gzip cpio) initrd."""
    owner = {}
    for name, paths in files.items():
        for p in paths:
            owner[_merged(p)] = name
    try:
        cpio = run(["gzip", "-dc", os.fspath(initrd)]).stdout
        listing = run(["cpio", "-it", "--quiet"], input=cpio).stdout
    except CommandError as e:
        raise PublishError(f"cannot list the initrd dracut made: {e}") from e
    found = set()
    for line in listing.decode("utf-8", "surrogateescape").splitlines():
        package = owner.get(_merged("/" + line.lstrip("./")))
        if package is not None:
            found.add(package)
    return found


def _merged(path: str) -> str:
    top, _, rest = path.lstrip("/").partition("/")
    return f"/usr/{top}/{rest}" if top in ("bin", "sbin", "lib", "lib64") else "/" + path.lstrip("/")


def _publish(store: ImageStore, path: Path, kind: str, kver: str) -> BootFile:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    sha, size = h.hexdigest(), path.stat().st_size
    rel = boot_path(sha, kind, kver)
    if not store.out.exists(rel):
        store.out.makedirs(os.path.dirname(rel))
        with tempfile.NamedTemporaryFile(dir=store.output / ".cache" / "boot", delete=False) as tmp:
            with open(path, "rb") as src:
                while chunk := src.read(1 << 20):
                    tmp.write(chunk)
            tmp.flush()
            os.fsync(tmp.fileno())
        try:
            os.chmod(tmp.name, 0o644)
            store.out.replace(os.path.relpath(tmp.name, store.output), rel)
            store.pool.created.append(rel)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp.name)
    return BootFile(location_of(rel), sha, size)
