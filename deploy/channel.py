"""The channel a machine updates from: /etc/rpmimg/channel.conf and its drop-ins.

    /usr/lib/rpmimg/channel.conf       vendor default (in the image)
    /etc/rpmimg/channel.conf           the administrator's; replaces the vendor file whole
    {/usr/lib,/etc}/rpmimg/channel.conf.d/*.conf
                                       drop-ins, by file name (one in /etc masks the same
                                       name in /usr/lib); each sets keys over the above

The files are TOML:

    image = "microos"                                  # image name on the server
    urls = ["https://updates.example.org/os/",         # the published output directory
            "https://mirror.example.net/os/"]          # (tried in order)
    keys = ["/etc/pki/vendor.asc"]                     # key files besides keys.d (optional)
    reboot = "window 03:00-05:00"                      # never | immediately | window HH:MM-HH:MM
    rollout = true                                     # follow the published rollout (default)
    reboot_command = ["systemctl", "reboot"]           # how to reboot (default)

Every file is read inside the sysroot (symlinks resolve there, as in a chroot), at most
CONFIG_LIMIT bytes; an unknown key, a wrong type or a malformed value is an error naming
the file and the key. Library code raises ChannelError.
"""

from __future__ import annotations

import enum
import json
import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.errors import DeployError
from host.kernel import Resolve, openat2

if TYPE_CHECKING:
    import datetime

CONFIG_LIMIT = 64 << 10
MAIN = ("usr/lib/rpmimg/channel.conf", "etc/rpmimg/channel.conf")
DROPIN_DIRS = ("usr/lib/rpmimg/channel.conf.d", "etc/rpmimg/channel.conf.d")
DEFAULT_REBOOT_COMMAND = ("systemctl", "reboot")
_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+~^-]*")
_WINDOW = re.compile(r"window ([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})")
_KEYS = ("image", "urls", "keys", "reboot", "rollout", "reboot_command")
_SCHEMES = ("http", "https", "file")


class ChannelError(DeployError):
    """The channel configuration is missing or malformed."""


class Reboot(enum.Enum):
    NEVER = "never"
    IMMEDIATELY = "immediately"
    WINDOW = "window"


@dataclass(frozen=True)
class RebootPolicy:
    """When a channel's upgrade may reboot: never, always, or within a time window."""

    kind: Reboot = Reboot.NEVER
    start: datetime.time | None = None  # of the window, local time
    end: datetime.time | None = None

    def __str__(self) -> str:
        if self.kind is Reboot.WINDOW:
            assert self.start is not None and self.end is not None
            return f"window {self.start:%H:%M}-{self.end:%H:%M}"
        return str(self.kind.value)

    def allows(self, now: datetime.time) -> bool:
        """Whether a reboot may happen at local time `now` (a window may cross midnight)."""
        if self.kind is not Reboot.WINDOW:
            return self.kind is Reboot.IMMEDIATELY
        assert self.start is not None and self.end is not None
        if self.start < self.end:
            return self.start <= now < self.end
        return now >= self.start or now < self.end


@dataclass(frozen=True)
class Channel:
    """Where this machine's updates come from, and what it does with them."""

    image: str
    urls: tuple[str, ...]
    keys: tuple[str, ...] = ()
    reboot: RebootPolicy = RebootPolicy()
    rollout: bool = True
    reboot_command: tuple[str, ...] = DEFAULT_REBOOT_COMMAND
    files: tuple[str, ...] = ()  # the files it was read from, in order

    def key_paths(self, sysroot: Path) -> tuple[Path, ...]:
        return tuple(sysroot / k.lstrip("/") for k in self.keys)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "urls": list(self.urls), "keys": list(self.keys),
                "reboot": str(self.reboot), "rollout": self.rollout, "files": list(self.files)}


def config_text(image: str, urls: tuple[str, ...], reboot: str = "never") -> bytes:
    """A channel.conf for `rpmimg install` to write; checked by the same parser."""
    text = (f"# Written by rpmimg install: where this machine's updates come from.\n"
            f"image = {json.dumps(image)}\nurls = {json.dumps(list(urls))}\n"
            f"reboot = {json.dumps(reboot)}\n").encode()
    parse(text, "channel.conf")
    return text


def parse_reboot(value: str, where: str) -> RebootPolicy:
    if value in ("never", "immediately"):
        return RebootPolicy(Reboot(value))
    m = _WINDOW.fullmatch(value)
    if m is None:
        raise ChannelError(f"{where}: reboot: expected never, immediately or"
                           f" 'window HH:MM-HH:MM', not {value!r}")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ChannelError(f"{where}: reboot: {value!r} is not a time of day")
    import datetime  # here: status reads channel files without a reboot window

    start, end = datetime.time(h1, m1), datetime.time(h2, m2)
    if start == end:
        raise ChannelError(f"{where}: reboot: the window {value!r} is empty")
    return RebootPolicy(Reboot.WINDOW, start, end)


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ChannelError(f"{where}: {key}: expected a list of strings")
    return tuple(value)


def _url(value: str, where: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in _SCHEMES or (parts.scheme != "file" and not parts.hostname):
        raise ChannelError(f"{where}: urls: {value!r} is not an http(s):// or file:// URL")
    if parts.query or parts.fragment or any(c.isspace() for c in value):
        raise ChannelError(f"{where}: urls: {value!r} has a query, fragment or space")
    return value if value.endswith("/") else value + "/"


def _check_value(key: str, value: Any, where: str) -> Any:
    """The value of `key` from one file, checked; ChannelError naming where otherwise."""
    if key == "image":
        if not isinstance(value, str) or len(value) > 255 or not _NAME.fullmatch(value):
            raise ChannelError(f"{where}: image: {value!r} is not an image name")
        return value
    if key == "urls":
        urls = tuple(_url(u, where) for u in _strings(value, key, where))
        if not urls:
            raise ChannelError(f"{where}: urls: at least one URL is needed")
        return urls
    if key == "keys":
        keys = _strings(value, key, where)
        for k in keys:
            if not k.startswith("/") or ".." in k.split("/") or "\0" in k:
                raise ChannelError(f"{where}: keys: {k!r} is not an absolute path without '..'")
        return keys
    if key == "reboot":
        if not isinstance(value, str):
            raise ChannelError(f"{where}: reboot: expected a string")
        return parse_reboot(value, where)
    if key == "rollout":
        if not isinstance(value, bool):
            raise ChannelError(f"{where}: rollout: expected true or false")
        return value
    command = _strings(value, key, where)
    if not command or not command[0]:
        raise ChannelError(f"{where}: reboot_command: expected a non-empty command")
    return command


def parse(data: bytes, where: str) -> dict[str, Any]:
    """The keys one file sets, checked."""
    import tomllib  # here: commands on a system without a channel file never parse one

    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ChannelError(f"{where}: not valid TOML: {e}") from None
    values = {}
    for key, value in table.items():
        if key not in _KEYS:
            raise ChannelError(f"{where}: unknown key {key!r} (expected one of {', '.join(_KEYS)})")
        values[key] = _check_value(key, value, where)
    return values


def _read_in_root(root_fd: int, rel: str, where: str) -> bytes | None:
    """The file at rel resolved inside the root; None when absent. A masking /dev/null is empty."""
    try:
        fd = openat2(root_fd, rel, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY, Resolve.IN_ROOT)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ChannelError(f"{where}: cannot open: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3):
            return b""  # a symlink to /dev/null masks a file, as in systemd
        raise ChannelError(f"{where}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(CONFIG_LIMIT + 1)
    if len(data) > CONFIG_LIMIT:
        raise ChannelError(f"{where}: larger than {CONFIG_LIMIT} bytes")
    return data


def _dropins(root_fd: int) -> list[str]:
    """Drop-in paths, by file name; one in /etc replaces the same name in /usr/lib."""
    chosen: dict[str, str] = {}
    for d in DROPIN_DIRS:
        try:
            fd = openat2(root_fd, d, os.O_RDONLY | os.O_DIRECTORY, Resolve.IN_ROOT)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
        for name in names:
            if name.endswith(".conf") and not name.startswith("."):
                chosen[name] = f"{d}/{name}"
    return [chosen[n] for n in sorted(chosen)]


def load(sysroot: Path) -> Channel | None:
    """The sysroot's channel, or None when no file configures one."""
    root_fd = os.open(sysroot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        mains = [(rel, _read_in_root(root_fd, rel, f"/{rel}")) for rel in MAIN]
        main = [(rel, data) for rel, data in mains if data is not None][-1:]
        files = main + [(rel, _read_in_root(root_fd, rel, f"/{rel}")) for rel in _dropins(root_fd)]
    finally:
        os.close(root_fd)
    merged: dict[str, Any] = {}
    read: list[str] = []
    for rel, data in files:
        if data is None:
            continue
        merged.update(parse(data, f"/{rel}"))
        read.append(f"/{rel}")
    return from_values(merged, read)


def from_values(values: Mapping[str, Any], files: list[str]) -> Channel | None:
    if not files or not values:
        return None
    where = ", ".join(files)
    for key in ("image", "urls"):
        if key not in values:
            raise ChannelError(f"{where}: no {key!r} configured")
    return Channel(files=tuple(files), **values)
