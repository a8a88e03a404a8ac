"""Results as JSON rows, a Markdown table and an SVG plot of the ratios against their targets."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from benchmarks.measure import Row


def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def markdown(rows: Sequence[Row], header: dict[str, str]) -> str:
    """The results table, preceded by the conditions it was measured in."""
    lines = [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| metric | rpmimg | peer | peer value | unit | ratio | target | met | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "—" if r.met is None else ("yes" if r.met else _missed_by(r))
        cells = [r.metric, _fmt(r.rpmimg), r.peer or "—", _fmt(r.peer_value), r.unit,
                 _fmt(r.ratio), r.target or "—", met, r.note]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _missed_by(r: Row) -> str:
    """How far a ratio is from its target, in words: 'no (needs 1.8x better)'."""
    assert r.ratio is not None and r.target
    op, value = r.target.split()
    goal = float(value)
    factor = goal / r.ratio if op == ">=" else r.ratio / goal
    return f"no (off by {factor:.2f}x)"


def svg(rows: Sequence[Row], title: str) -> str:
    """Each ratio that has a target as a bar on a log scale, the target as a tick; green when met."""
    plotted = [r for r in rows if r.ratio is not None and r.ratio > 0 and r.target]
    pending = [r for r in rows if r.ratio is None and r.target]
    lo, hi = -2.0, 2.0  # log10 range: 0.01x .. 100x
    left, width, bar_h, gap = 470, 420, 18, 10
    height = 60 + (len(plotted) + len(pending)) * (bar_h + gap) + 30

    def x(ratio: float) -> float:
        v = min(max(math.log10(ratio), lo), hi)
        return left + (v - lo) / (hi - lo) * width

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 150}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>']
    for tick in (0.01, 0.1, 1, 10, 100):
        tx = x(tick)
        out.append(f'<line x1="{tx:.1f}" y1="35" x2="{tx:.1f}" y2="{height - 25}" stroke="#ddd"/>')
        out.append(f'<text x="{tx:.1f}" y="{height - 10}" text-anchor="middle">{tick:g}x</text>')
    y = 45
    for r in plotted:
        assert r.ratio is not None
        color = "#2a9d4a" if r.met else "#d1495b"
        x0, x1 = sorted((x(1.0), x(r.ratio)))
        label = f"{r.metric} vs {r.peer}"
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{escape(label[:76])}</text>')
        out.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar_h}" '
                   f'fill="{color}"/>')
        goal = float(r.target.split()[1])
        out.append(f'<line x1="{x(goal):.1f}" y1="{y - 3}" x2="{x(goal):.1f}" y2="{y + bar_h + 3}" '
                   'stroke="black" stroke-width="2"/>')
        out.append(f'<text x="{x1 + 4:.1f}" y="{y + 13}">{r.ratio:.2f}x (target {escape(r.target)})</text>')
        y += bar_h + gap
    for r in pending:
        label = f"{r.metric} vs {r.peer}"
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" fill="#888">'
                   f'{escape(label[:76])}</text>')
        out.append(f'<text x="{left + 4}" y="{y + 13}" fill="#888">not run (target {escape(r.target)})</text>')
        y += bar_h + gap
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_results(rows: Sequence[Row], header: dict[str, str], directory: Path) -> dict[str, Path]:
    """latest.json, latest.md and latest.svg in directory, each written whole then renamed."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "latest.json": json.dumps([r.as_dict() for r in rows], indent=1) + "\n",
        "latest.md": markdown(rows, header),
        "latest.svg": svg(rows, f"rpmimg / peer ratios, {header.get('date', '')}"),
    }
    written = {}
    for name, text in files.items():
        path = directory / name
        tmp = path.with_name(name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        written[name] = path
    return written
