"""`rpmimg diff --etc [A [B]]` shows the /etc merge a deployment records, with --json."""

from __future__ import annotations

import os
from pathlib import Path

from deploytools import Images, deploy, rpmimg

from deploy.etcbase import MERGE_RECORD, write_records
from deploy.etcmerge import EtcAction, EtcMerge
from host import kernel

pytest_plugins = ("deployenv",)

MERGE = EtcMerge((
    EtcAction("/etc/a.conf", "vendor", "a-2-1.noarch", "the vendor's version"),
    EtcAction("/etc/b.conf", "rpmnew", "b-2-1.noarch", "kept the administrator's; the vendor's is /etc/b.conf.rpmnew"),
    EtcAction("/etc/c.conf", "rpmsave", "c-2-1.noarch", "saved"),
    EtcAction("/etc/d.conf", "kept", "d-2-1.noarch", "the administrator's version stays"),
))


def _record(tree: Path, merge: EtcMerge, merged_from: str | None) -> None:
    kernel.subvolume_set_readonly(tree, False)
    try:
        fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
        try:
            write_records(fd, merge, merged_from)
        finally:
            os.close(fd)
    finally:
        kernel.subvolume_set_readonly(tree, True)


def test_diff_etc_shows_the_recorded_merge(sysroot: Path, images: Images) -> None:
    first = str(deploy(sysroot, images.v1, images.key).json()["deployment"]["id"])  # type: ignore[index]
    second = str(deploy(sysroot, images.v2, images.key).json()["deployment"]["id"])  # type: ignore[index]
    tree = sysroot / "@rpmimg/deployments" / second
    _record(tree, MERGE, first)
    d = rpmimg("diff", "--etc", "--sysroot", sysroot, "--json").json()
    ids = tuple(d[k]["id"] for k in ("old", "new", "merged_from"))  # type: ignore[index]
    assert (*ids, d["recorded"]) == (first, second, first, True)
    assert [a["path"] for a in d["notable"]] == ["/etc/b.conf", "/etc/c.conf"]  # type: ignore[union-attr,index]
    assert len(d["actions"]) == 4  # type: ignore[arg-type]
    text = rpmimg("diff", "--etc", "--sysroot", sysroot).out.splitlines()
    assert text[0] == f"deployment {second}: /etc merged from deployment {first}'s root: 4 paths changed, 2 to look at"
    assert text[1].startswith("! rpmnew") and "/etc/b.conf" in text[1]
    assert text[3].startswith("  vendor") and "/etc/a.conf" in text[3]
    # The other way round: the first deployment records its own merge, as rpm -i, from no root.
    old = rpmimg("diff", "--etc", second, first, "--sysroot", sysroot, "--json").json()
    assert old["recorded"] is True and old["merged_from"] is None
    assert {a["action"] for a in old["actions"]} <= {"created", "rpmnew", "rpmorig"}  # type: ignore[union-attr,index]
    # A damaged record: one line naming it, exit 1.
    kernel.subvolume_set_readonly(tree, False)
    (tree / MERGE_RECORD).write_text('{"merged_from": null, "actions": [{"path": 1}]}')
    kernel.subvolume_set_readonly(tree, True)
    bad = rpmimg("diff", "--etc", "--sysroot", sysroot, check=False)
    assert bad.code == 1 and "etc-merge.json" in bad.err and "Traceback" not in bad.err
