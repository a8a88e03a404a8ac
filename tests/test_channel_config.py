"""channel.conf: vendor default, /etc override, drop-ins, and what the strict parser refuses."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

from deploy.channel import CONFIG_LIMIT, ChannelError, Reboot, load, parse, parse_reboot

GOOD = b'image = "demo"\nurls = ["https://a.example/os", "http://b.example/os/"]\n'


def write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_no_file_is_no_channel(tmp_path: Path) -> None:
    assert load(tmp_path) is None


def test_vendor_default_etc_override_and_dropins(tmp_path: Path) -> None:
    write(tmp_path, "usr/lib/rpmimg/channel.conf", b'image = "vendor"\nurls = ["https://v.example/"]\n')
    ch = load(tmp_path)
    assert ch is not None and ch.image == "vendor" and ch.urls == ("https://v.example/",)
    assert ch.reboot.kind is Reboot.NEVER and ch.rollout and ch.reboot_command == ("systemctl", "reboot")
    # /etc replaces the vendor file whole: its image and urls, nothing merged from it.
    write(tmp_path, "etc/rpmimg/channel.conf", GOOD)
    ch = load(tmp_path)
    assert ch is not None and ch.image == "demo"
    assert ch.urls == ("https://a.example/os/", "http://b.example/os/")
    assert ch.files == ("/etc/rpmimg/channel.conf",)
    # Drop-ins apply by name; /etc masks the same name in /usr/lib.
    write(tmp_path, "usr/lib/rpmimg/channel.conf.d/10-reboot.conf", b'reboot = "immediately"\n')
    write(tmp_path, "usr/lib/rpmimg/channel.conf.d/20-rollout.conf", b"rollout = false\n")
    write(tmp_path, "etc/rpmimg/channel.conf.d/10-reboot.conf", b'reboot = "window 22:30-02:00"\n')
    write(tmp_path, "etc/rpmimg/channel.conf.d/ignored.txt", b"garbage = [\n")
    ch = load(tmp_path)
    assert ch is not None and str(ch.reboot) == "window 22:30-02:00" and not ch.rollout
    assert ch.files == ("/etc/rpmimg/channel.conf", "/etc/rpmimg/channel.conf.d/10-reboot.conf",
                        "/usr/lib/rpmimg/channel.conf.d/20-rollout.conf")
    # A drop-in linked to /dev/null masks the vendor's, as in systemd.
    os.symlink("/dev/null", tmp_path / "etc/rpmimg/channel.conf.d/20-rollout.conf")
    ch = load(tmp_path)
    assert ch is not None and ch.rollout


def test_window_crosses_midnight() -> None:
    w = parse_reboot("window 22:30-02:00", "x")
    assert w.allows(datetime.time(23, 0)) and w.allows(datetime.time(1, 59))
    assert not w.allows(datetime.time(2, 0)) and not w.allows(datetime.time(12, 0))
    day = parse_reboot("window 03:00-05:00", "x")
    assert day.allows(datetime.time(3, 0)) and not day.allows(datetime.time(5, 0))
    assert parse_reboot("immediately", "x").allows(datetime.time(12, 0))
    assert not parse_reboot("never", "x").allows(datetime.time(12, 0))


@pytest.mark.parametrize(("text", "message"), [
    (b'image = "demo"\nurl = ["https://a/"]\n', "unknown key 'url'"),
    (b'image = "../etc"\nurls = ["https://a/"]\n', "image: '../etc' is not an image name"),
    (b'image = 3\nurls = ["https://a/"]\n', "image: 3 is not an image name"),
    (b'image = "demo"\nurls = "https://a/"\n', "urls: expected a list of strings"),
    (b'image = "demo"\nurls = []\n', "at least one URL"),
    (b'image = "demo"\nurls = ["ftp://a/"]\n', "not an http(s):// or file:// URL"),
    (b'image = "demo"\nurls = ["https:///nohost"]\n', "not an http(s):// or file:// URL"),
    (b'image = "demo"\nurls = ["https://a/?x=1"]\n', "query, fragment or space"),
    (b'image = "demo"\nurls = ["https://a/ b"]\n', "query, fragment or space"),
    (b'keys = ["relative.asc"]\n', "keys: 'relative.asc' is not an absolute path"),
    (b'keys = ["/etc/../../x.asc"]\n', "without '..'"),
    (b'reboot = "sometimes"\n', "reboot: expected never, immediately"),
    (b'reboot = "window 3:00-5:00"\n', "reboot: expected never"),
    (b'reboot = "window 24:00-05:00"\n', "is not a time of day"),
    (b'reboot = "window 03:61-05:00"\n', "is not a time of day"),
    (b'reboot = "window 03:00-03:00"\n', "is empty"),
    (b"reboot = true\n", "reboot: expected a string"),
    (b'rollout = "yes"\n', "rollout: expected true or false"),
    (b"reboot_command = []\n", "reboot_command: expected a non-empty command"),
    (b'reboot_command = "reboot"\n', "reboot_command: expected a list of strings"),
    (b"image = \n", "not valid TOML"),
    (b"\xff\xfe", "not valid TOML"),
    (b'[section]\nimage = "x"\n', "unknown key 'section'"),
])
def test_malformed_values_name_the_file_and_key(text: bytes, message: str) -> None:
    with pytest.raises(ChannelError) as e:
        parse(text, "/etc/rpmimg/channel.conf")
    assert str(e.value).startswith("/etc/rpmimg/channel.conf: ") and message in str(e.value)


def test_missing_required_keys(tmp_path: Path) -> None:
    write(tmp_path, "etc/rpmimg/channel.conf", b'reboot = "never"\n')
    with pytest.raises(ChannelError, match="no 'image' configured"):
        load(tmp_path)


def test_hostile_files_are_refused_without_reading_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = write(tmp_path, "outside.conf", b'image = "stolen"\nurls = ["https://evil.example/"]\n')
    # An absolute symlink resolves inside the sysroot, as in a chroot: not the host's file.
    (root / "etc/rpmimg").mkdir(parents=True)
    os.symlink(outside, root / "etc/rpmimg/channel.conf")
    assert load(root) is None
    os.unlink(root / "etc/rpmimg/channel.conf")
    os.symlink("../../../../outside.conf", root / "etc/rpmimg/channel.conf")  # '..' stops at root
    assert load(root) is None
    os.unlink(root / "etc/rpmimg/channel.conf")
    # Too large, a FIFO (never blocks), a directory: each one line naming the file.
    write(root, "etc/rpmimg/channel.conf", b"#" * (CONFIG_LIMIT + 1))
    with pytest.raises(ChannelError, match=r"^/etc/rpmimg/channel.conf: larger than"):
        load(root)
    os.unlink(root / "etc/rpmimg/channel.conf")
    os.mkfifo(root / "etc/rpmimg/channel.conf")
    with pytest.raises(ChannelError, match=r"^/etc/rpmimg/channel.conf: not a regular file"):
        load(root)
    os.unlink(root / "etc/rpmimg/channel.conf")
    (root / "etc/rpmimg/channel.conf").mkdir()
    with pytest.raises(ChannelError, match=r"^/etc/rpmimg/channel.conf: not a regular file"):
        load(root)
    assert outside.read_bytes().startswith(b'image = "stolen"')


def test_key_paths_resolve_in_the_sysroot(tmp_path: Path) -> None:
    write(tmp_path, "etc/rpmimg/channel.conf", GOOD + b'keys = ["/etc/pki/vendor.asc"]\n')
    ch = load(tmp_path)
    assert ch is not None and ch.key_paths(tmp_path) == (tmp_path / "etc/pki/vendor.asc",)


def test_install_writes_what_the_parser_reads(tmp_path: Path) -> None:
    from deploy.channel import config_text

    write(tmp_path, "etc/rpmimg/channel.conf", config_text("demo", ("https://u.example/os",), "window 03:00-05:00"))
    ch = load(tmp_path)
    assert ch is not None and (ch.image, ch.urls, str(ch.reboot)) == (
        "demo", ("https://u.example/os/",), "window 03:00-05:00")
    with pytest.raises(ChannelError, match="not an image name"):
        config_text('x"\nurls = ["https://evil/"]', ("https://u.example/",))


def test_version_is_the_installed_package_version() -> None:
    import tomllib

    from deploytools import rpmimg

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    out = rpmimg("--version").out
    assert out == f"rpmimg {project['project']['version']}\n"
