"""A converted kernel package carries the module indexes Debian's postinst would make:
without them the booted image's modprobe finds nothing (udev loads no driver, 9p cannot
be mounted)."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from benchmarks.kmodindex import DepmodError, kernel_versions, module_indexes, with_module_indexes
from benchmarks.rpmwriter import FileEntry

WANTED = ("fs/9p/9p.ko", "net/9p/9pnet.ko", "net/9p/9pnet_virtio.ko", "fs/netfs/netfs.ko",
          "fs/fscache/fscache.ko")


def _kernel_deb() -> Path:
    for cache in (Path.home() / ".cache/rpmimg/qemu", Path.home() / ".cache/rpmimg/bootimage/debs"):
        found = sorted(cache.glob("linux-image-6*_amd64.deb"))
        if found:
            return found[-1]
    pytest.skip("no Debian kernel package cached (the QEMU tests download it)")


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[FileEntry]]:
    """A few real modules of Debian's kernel, as deb2rpm lays them out."""
    if shutil.which("depmod") is None and not Path("/usr/sbin/depmod").exists():
        pytest.skip("depmod not installed (kmod)")
    deb = _kernel_deb()
    tmp = tmp_path_factory.mktemp("kmod")
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True).stdout
    (tmp / "data.tar").write_bytes(tar)
    files = []
    with tarfile.open(tmp / "data.tar") as tf:
        for m in tf:
            parts = m.name.split("/")
            if m.isfile() and len(parts) > 4 and parts[1:3] == ["lib", "modules"] \
                    and "/".join(parts[5:]) in WANTED:
                f = tf.extractfile(m)
                assert f is not None
                files.append(FileEntry("/usr/" + "/".join(parts[1:]), 0o100644, mtime=5,
                                       data=f.read()))
    assert len(files) == len(WANTED)
    kver = files[0].path.split("/")[4]
    return kver, files


def test_kernel_versions_only_from_modules() -> None:
    files = [FileEntry("/usr/lib/modules/6.1.0-1/vmlinuz", 0o100644),
             FileEntry("/usr/lib/modules/6.1.0-1/kernel/a.txt", 0o100644),
             FileEntry("/usr/bin/x.ko", 0o100644)]
    assert kernel_versions(files) == []
    assert with_module_indexes(files) == files  # nothing added to a package without modules


def test_indexes_name_dependencies_and_aliases(modules: tuple[str, list[FileEntry]]) -> None:
    kver, files = modules
    assert kernel_versions(files) == [kver]
    out = {e.path.rsplit("/", 1)[1]: e for e in with_module_indexes(files) if e not in files}
    assert {"modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin"} <= set(out)
    dep = out["modules.dep"].data.decode()
    line = next(ln for ln in dep.splitlines() if ln.startswith("kernel/fs/9p/9p.ko:"))
    assert "kernel/net/9p/9pnet.ko" in line and "kernel/fs/netfs/netfs.ko" in line
    # what `mount -t 9p -o trans=virtio` asks modprobe for
    aliases = out["modules.alias"].data.decode()
    assert "alias fs-9p 9p" in aliases and "alias 9p-virtio 9pnet_virtio" in aliases
    assert all(e.path.startswith(f"/usr/lib/modules/{kver}/") and e.mtime == 5
               and e.mode == 0o100644 for e in out.values())


def test_hostile_paths_refused(modules: tuple[str, list[FileEntry]], tmp_path: Path) -> None:
    kver, files = modules
    with pytest.raises(DepmodError, match="not a kernel version"):
        module_indexes(files, "..")
    evil = FileEntry(f"/usr/lib/modules/{kver}/kernel/../../../../../{tmp_path.name}/x.ko",
                     0o100644, data=b"x")
    with pytest.raises(DepmodError, match="not a plain path"):
        module_indexes([*files, evil], kver)
    assert list(tmp_path.iterdir()) == []
