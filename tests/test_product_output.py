"""Readable output, one JSON schema for every verb, and the conventions a newcomer expects."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploytools import V2, Images, deploy, rpmimg
from imagepub import publish
from jsonschemas import validate

from fixtures.build import fixture_packages
from host import kernel

pytest_plugins = ("deployenv",)


def _btrfs_du_exclusive(path: Path) -> int:
    out = subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", os.fspath(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[1].split()[1])


def test_status_of_five_deployments_fits_80_columns(sysroot: Path, images: Images, tmp_path: Path) -> None:
    out = tmp_path / "out"
    long_name = "a-rather-long-image-name-for-a-fleet"
    manifests = [publish(out, long_name, f"2026120{i}.1.with.a.long.suffix", images.v2_rpms, images.key)
                 for i in range(1, 6)]
    for m in manifests:
        deploy(sysroot, m, images.key, "--switch")
    rpmimg("pin", "--sysroot", sysroot, "2")
    rpmimg("rollback", "--sysroot", sysroot)
    text = rpmimg("status", "--sysroot", sysroot).out.splitlines()
    assert len(text) == 6 and all(len(line) <= 80 for line in text), text
    assert text[0].split() == ["ID", "IMAGE", "VERSION", "PKGS", "CREATED", "EXCLUSIVE", "STATE"]
    by_id = {re.split(r"\s+", line.strip())[0] if not line.startswith("*") else line.split()[1]: line
             for line in text[1:]}
    assert by_id["4"].startswith("*") and by_id["4"].rstrip().endswith("default")
    assert by_id["5"].rstrip().endswith("failed") and by_id["2"].rstrip().endswith("pinned")
    # Columns align: every row's ID ends in the same column as the header's.
    ends = {line.index(i) + len(i) for i, line in by_id.items()}
    assert ends == {text[0].index("ID") + 2}

    verbose = rpmimg("status", "--sysroot", sysroot, "--verbose").out
    assert f"source: {out}/images/{long_name}/" in verbose and images.key.fingerprint.lower() in verbose.lower()
    assert all(len(line) <= 80 for line in verbose.splitlines() if not line.startswith("      source"))


def test_status_exclusive_sizes_match_btrfs_du(sysroot: Path, images: Images) -> None:
    deploy(sysroot, images.v1, images.key)
    deploy(sysroot, images.v2, images.key, "--full")
    rows = rpmimg("status", "--sysroot", sysroot, "--json").json()["deployments"]
    for row in rows:  # type: ignore[union-attr]
        tree = sysroot / "@rpmimg/deployments" / row["id"]
        kernel.sync_filesystem(tree)
        want = _btrfs_du_exclusive(tree)
        assert abs(row["exclusive_bytes"] - want) <= max(want // 100, 4096), (row["id"], want)
    assert any(row["exclusive_bytes"] > 0 for row in rows)  # type: ignore[union-attr]


def test_deploy_report_is_a_summary(sysroot: Path, images: Images) -> None:
    r = rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public, images.v1)
    lines = r.out.splitlines()
    assert len(lines) <= 8, lines
    assert any("outside /usr placed under /usr/share/factory (--verbose lists them)" in line for line in lines)
    assert "/etc/outside-usr.conf" not in r.out
    full = rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public, "--verbose", images.v2)
    assert "/etc/outside-usr.conf" not in full.out or "outside-usr-1.0-1.x86_64:" in full.out


def test_errors_under_json_are_objects(sysroot: Path, images: Images, tmp_path: Path) -> None:
    missing = rpmimg("deploy", "--sysroot", sysroot, "--json", tmp_path / "nothing", check=False)
    assert missing.code == 1
    value = validate(["deploy"], missing.out)
    assert value["error"]["kind"] == "manifest" and "nothing" in value["error"]["message"]
    lock = rpmimg("status", "--sysroot", tmp_path, "--json", check=False)
    assert lock.code == 1 and validate(["status"], lock.out)["error"]["kind"] == "layout"


def test_pkg_and_image_verbs_speak_the_schema(images: Images, tmp_path: Path) -> None:
    plain = fixture_packages()["epoch"]
    one = rpmimg("pkg", "transcode", plain, "-o", tmp_path / "one.rpm", "--json").json()
    assert len(one["packages"]) == 1  # type: ignore[arg-type]  # a list, even for one input
    two = tmp_path / "two"
    rpmimg("pkg", "transcode", plain, fixture_packages()["sizes"], "-o", two, "--json")
    rpmimg("pkg", "info", tmp_path / "one.rpm", "--json")
    rpmimg("pkg", "verify", tmp_path / "one.rpm", "--json")
    rpmimg("pkg", "extract", tmp_path / "one.rpm", tmp_path / "x", "--json")
    rpmimg("image", "list", images.output, "--json")
    d = rpmimg("image", "diff", images.output, "demo", images.v1.parent.name, V2, "--json").json()
    assert d["new"] == {"id": None, "image": "demo", "version": V2}
    info = rpmimg("pkg", "info", plain, check=False)
    assert info.code == 1 and "a plain RPM, not an extents package" in info.err
    assert "magic" not in info.err


def test_cli_conventions(sysroot: Path, images: Images) -> None:
    late = rpmimg("status", "--sysroot", "/nonexistent", "--debug", check=False)
    assert "Traceback" in late.err  # --debug after the verb works
    unknown = rpmimg("status", "--frobnicate", check=False)
    assert unknown.code == 2 and "usage: rpmimg status" in unknown.err
    negative = rpmimg("deploy", "--lock-wait", "-3", images.v1, check=False)
    assert negative.code == 2 and "can't be negative" in negative.err
    as_json = rpmimg("deploy", "--lock-wait", "-3", images.v1, "--json", check=False)
    assert as_json.code == 2 and validate(["deploy"], as_json.out)["error"]["kind"] == "usage"
    keep = rpmimg("cleanup", "--keep", "0", check=False)
    assert keep.code == 2 and "at least 1" in keep.err

    deploy(sysroot, images.v1, images.key)
    tree = sysroot / "@rpmimg/deployments/1"
    kernel.subvolume_set_readonly(tree, False)
    (tree / "share/sizes/size-4097").chmod(0o600)
    kernel.subvolume_set_readonly(tree, True)
    one = rpmimg("verify", "--sysroot", sysroot, check=False)
    assert "1 mismatch" in one.out and "1 mismatches" not in one.out


@pytest.mark.parametrize("argv", [["status"], ["pkg", "info"], ["state", "rebuild"], ["switch"]])
def test_every_schema_is_found(argv: list[str]) -> None:
    from jsonschemas import SCHEMAS, schema_name

    assert (SCHEMAS / f"{schema_name(argv)}.json").is_file()


def test_progress_without_a_terminal_is_one_plain_line_per_slow_phase() -> None:
    import io

    from rpmimg.ui import Progress

    stream = io.StringIO()
    quick = Progress("verify", stream=stream, unit="files")
    quick(3, 3)
    quick.close()
    assert stream.getvalue() == ""  # a phase under a second says nothing
    slow = Progress("fetch", stream=stream)
    slow.PLAIN_AFTER = 0.0
    slow(512, 1024)
    slow(2048, 2048)
    slow.close()
    slow.close()
    assert re.fullmatch(r"fetch: 2\.0 KiB/2\.0 KiB \([0-9.]+ s\)\n", stream.getvalue())
    failed = Progress("build", stream=stream, unit="packages")
    failed.PLAIN_AFTER = 0.0
    failed(1, 5)
    failed.close()
    assert stream.getvalue().count("\n") == 1  # an unfinished phase is not reported as done


def test_schema_files_are_valid_json_schemas() -> None:
    import json

    import jsonschema
    from jsonschemas import SCHEMAS

    names = sorted(p.name for p in SCHEMAS.glob("*.json"))
    assert {"common.json", "error.json", "deploy.json", "status.json", "verify.json"} <= set(names)
    for name in names:
        jsonschema.Draft202012Validator.check_schema(json.loads((SCHEMAS / name).read_text()))


def test_the_vocabulary_check_catches_what_it_should() -> None:
    from jsonschemas import validate

    with pytest.raises(AssertionError, match="null, not an empty string"):
        validate(["pin"], '{"deployment": {"id": "1", "image": "demo", "version": "1"}, "pinned": ""}')
    with pytest.raises(AssertionError):
        validate(["deploy"], '{"deployment": "3"}')
    with pytest.raises(Exception, match="is not valid|required"):
        validate(["pin"], '{"deployment": {"id": "1", "image": "demo", "version": "1"}}')


def test_man_page_and_completion_come_from_the_parser(tmp_path: Path) -> None:
    """What `make docs` runs: every verb appears in the manual page and the completion."""
    import shutil

    tools = Path(sys.executable).parent
    if not (tools / "argparse-manpage").exists() or shutil.which("shtab", path=os.fspath(tools)) is None:
        pytest.skip("argparse-manpage and shtab are not installed (pip install -e '.[test]')")
    page = tmp_path / "rpmimg.1"
    subprocess.run([tools / "argparse-manpage", "--module", "rpmimg.cli", "--function", "build_parser",
                    "--project-name", "rpmimg", "--prog", "rpmimg", "--output", page], check=True)
    completion = subprocess.run([tools / "shtab", "--shell=bash", "rpmimg.cli.build_parser"],
                                capture_output=True, text=True, check=True).stdout
    text = page.read_text()
    for verb in ("deploy", "switch", "status", "verify", "rollback", "compose", "pkg"):
        assert verb in text and verb in completion, verb
    assert "--lock-wait" in completion and "--allow-unsigned-packages" in text.replace("\\-", "-")


def test_dropped_setid_bits_are_stated_plainly(sysroot: Path, images: Images) -> None:
    # This machine lacks the account the owners package's set-id files belong to.
    (sysroot / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (sysroot / "etc/group").write_text("root:x:0:\n")
    r = rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public, images.v1)
    warnings = [line.strip() for line in r.out.splitlines() if line.strip().startswith("warning:")]
    assert ("warning: /usr/share/owners/setuid lost its setuid bit (user rpmimg-user is unknown here)"
            in warnings)
    assert ("warning: /usr/share/owners/setgid lost its setgid bit (group rpmimg-group is unknown here)"
            in warnings)
    tree = sysroot / "@rpmimg/deployments/1/share/owners"
    assert not os.stat(tree / "setuid").st_mode & 0o6000 and not os.stat(tree / "setgid").st_mode & 0o6000
    again = rpmimg("deploy", "--sysroot", sysroot, "--keyring", images.key.public, "--json", images.v2).json()
    assert "/usr/share/owners/setuid lost its setuid bit (user rpmimg-user is unknown here)" in again["setid_dropped"]
