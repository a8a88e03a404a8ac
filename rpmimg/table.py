"""`rpmimg status` as an aligned table that fits an 80-column terminal.

Hand-written rather than with a table library: the rows are few, the columns fixed, and
the one rule that matters (never wider than 80 columns, shrinking the image and version
columns first) is a dozen lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rpmimg.ui import human_bytes

WIDTH = 80
HEADER = ("", "ID", "IMAGE", "VERSION", "PKGS", "CREATED", "EXCLUSIVE", "STATE")
# Columns that shrink (with "~" marking the cut) when the table is too wide, in order.
SHRINKABLE = (2, 3)
MIN_SHRUNK = 6
RIGHT = {1, 4, 6}


def state_words(row: dict[str, Any]) -> str:
    words = [w for w, key in (("booted", "booted"), ("default", "default"), ("pinned", "pinned"),
                              ("failed", "rolled_back")) if row.get(key)]
    return ",".join(words)


def _cells(row: dict[str, Any]) -> list[str]:
    size = row.get("exclusive_bytes")
    created = (row.get("created") or "")[:10]
    return [
        "*" if row.get("default") else "", row["id"], row["image"], row["version"],
        str(row["packages"]), created, human_bytes(size) if size is not None else "-",
        state_words(row),
    ]


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def render(rows: Sequence[dict[str, Any]], width: int = WIDTH) -> list[str]:
    """The table's lines: a header, then one line per deployment, none wider than width."""
    table = [list(HEADER), *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER))]
    total = sum(widths) + 2 * (len(widths) - 1)
    for col in SHRINKABLE:
        excess = total - width
        if excess <= 0:
            break
        cut = min(excess, max(0, widths[col] - MIN_SHRUNK))
        widths[col] -= cut
        total -= cut
    out = []
    for line in table:
        cells = [
            (f"{_cut(c, widths[i]):>{widths[i]}}" if i in RIGHT else f"{_cut(c, widths[i]):<{widths[i]}}")
            for i, c in enumerate(line)
        ]
        out.append(_cut("  ".join(cells).rstrip(), width))
    return out


def details(row: dict[str, Any]) -> list[str]:
    """The --verbose lines under a deployment's row."""
    return [
        f"      source: {row.get('source') or '-'}",
        f"      signed by: {row.get('signed_by') or '-'}",
        f"      kernel: {row.get('kernel') or '-'}",
        f"      path: {row.get('path') or row.get('subvol') or '-'}",
        f"      root: {row.get('root') or row.get('root_subvol') or '-'}",
        *(_boot_line(e) for e in row.get("boot") or ()),
        *([f"      failed to boot: {row['failed']}"] if row.get("failed") else []),
    ]


def _boot_line(e: dict[str, Any]) -> str:
    """A boot entry: its file, kernel, assessment and tries (cut to the terminal's width)."""
    tries = f", {e['tries_left']} tries left, {e['tries_done']} done" if e.get("tries_left") is not None else ""
    return _cut(f"      boot: {e['entry']} ({e['kernel_version']}, {e['assessment']}{tries})", WIDTH)
