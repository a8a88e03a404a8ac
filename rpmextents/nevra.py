"""A package's identity (name, epoch, version, release, arch) and rpm's version order.

One formatting rule, rpm's own (`rpm -q --qf '%{NEVRA}'`): the epoch is printed
when the package has an Epoch tag, even when it is 0, and not at all when it has
none. One comparison rule, rpm's too: a missing epoch orders as 0, and versions and
releases compare with rpmvercmp (digits numerically, `~` before anything, `^`
after the base version). Written in Python so that neither side needs rpm's
bindings (and their process-wide state) to sort versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rpmextents.header import Header, Tag

# A segment is a run of digits or a run of ASCII letters; `~` and `^` are separators
# with a meaning of their own; every other character only separates segments.
_SEGMENT = re.compile(r"[0-9]+|[A-Za-z]+|~|\^")


def vercmp(a: str, b: str) -> int:
    """rpm's rpmvercmp: -1, 0 or 1 as version (or release) a is older, equal or newer than b."""
    if a == b:
        return 0
    one, two = _SEGMENT.findall(a), _SEGMENT.findall(b)
    for i in range(max(len(one), len(two))):
        x = one[i] if i < len(one) else ""
        y = two[i] if i < len(two) else ""
        if x == "~" or y == "~":  # a tilde sorts before everything, even the end
            if x != y:
                return -1 if x == "~" else 1
            continue
        if x == "^" or y == "^":  # a caret sorts after the end, before anything else
            if x == y:
                continue
            if not x:
                return -1
            if not y:
                return 1
            return 1 if y == "^" else -1
        if not x or not y:
            break
        if x.isdigit() != y.isdigit():  # numeric segments are newer than alphabetic ones
            return 1 if x.isdigit() else -1
        if x.isdigit():
            x, y = x.lstrip("0"), y.lstrip("0")
            if len(x) != len(y):
                return 1 if len(x) > len(y) else -1
        if x != y:
            return 1 if x > y else -1
    rest_a, rest_b = len(one) > len(two), len(two) > len(one)
    if not rest_a and not rest_b:
        return 0
    return 1 if rest_a else -1


def _epoch_text(epoch: int | None) -> str:
    return "" if epoch is None else f"{epoch}:"


@dataclass(frozen=True)
class Nevra:
    """A package's identity; `str()` is rpm's NEVRA, `evr` its EVR."""

    name: str
    epoch: int | None
    version: str
    release: str
    arch: str

    def __str__(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"

    @property
    def evr(self) -> str:
        """`[epoch:]version-release`, as rpm prints %{EVR}."""
        return f"{_epoch_text(self.epoch)}{self.version}-{self.release}"

    @property
    def nvra(self) -> str:
        """`name-version-release.arch`: the name rpm gives the package file."""
        return f"{self.name}-{self.version}-{self.release}.{self.arch}"

    def compare(self, other: Nevra) -> int:
        """rpm's order of the two EVRs (-1, 0, 1); name and arch are not compared."""
        return compare_evr(
            (self.epoch, self.version, self.release), (other.epoch, other.version, other.release)
        )


def compare_evr(a: tuple[int | None, str, str], b: tuple[int | None, str, str]) -> int:
    """rpm's order of two (epoch, version, release) triples; a missing epoch is 0."""
    ea, eb = a[0] or 0, b[0] or 0
    if ea != eb:
        return 1 if ea > eb else -1
    return vercmp(a[1], b[1]) or vercmp(a[2], b[2])


def nevra_of(header: Header) -> Nevra:
    """The identity a package header gives."""
    # Source packages have no ARCH tag worth trusting; binary ones always do.
    return Nevra(header.string(Tag.NAME), header.number(Tag.EPOCH), header.string(Tag.VERSION),
                 header.string(Tag.RELEASE), header.string(Tag.ARCH, "noarch"))
