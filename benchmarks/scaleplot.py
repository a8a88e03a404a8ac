"""scaling.svg: time and peak memory against file count, one line per operation.

Hand-written SVG like report.py's chart: a plotting library would be the benchmark's
only heavy dependency for two line charts.
"""

from __future__ import annotations

import os
from html import escape
from pathlib import Path

from benchmarks.measure import Timing

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
OPS = ("transcode", "extract", "deploy", "verify", "status", "rpm -i", "rpm -V", "cp -a --reflink")


def _panel(series: dict[str, list[tuple[int, float]]], title: str, unit: str, x0: int) -> list[str]:
    w, h, top, left = 380, 260, 40, 50
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    xmax, ymax = max(xs or [1]), max(ys or [1]) * 1.1 or 1

    def px(x: float) -> float:
        return x0 + left + x / xmax * w

    def py(y: float) -> float:
        return top + h - y / ymax * h

    out = [f'<text x="{x0 + left}" y="{top - 15}" font-size="14">{escape(title)}</text>',
           f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(xmax)}" y2="{py(0)}" stroke="black"/>',
           f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(0)}" y2="{top}" stroke="black"/>',
           f'<text x="{px(0) - 5}" y="{top + 4}" font-size="10" text-anchor="end">{ymax:.3g}</text>',
           f'<text x="{px(0) - 5}" y="{top + 14}" font-size="10" text-anchor="end">{escape(unit)}</text>']
    for x in sorted(set(xs)):
        out.append(f'<text x="{px(x)}" y="{py(0) + 14}" font-size="10" text-anchor="middle">{x // 1000}k</text>')
    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(pts))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        out.append(f'<text x="{x0 + left + w + 8}" y="{top + 14 * i + 10}" font-size="11" '
                   f'fill="{colour}">{escape(name)}</text>')
    return out


def svg(by_size: dict[int, dict[str, Timing]]) -> str:
    ops = [op for op in OPS if all(op in f for f in by_size.values())]
    times = {op: [(n, f[op].seconds) for n, f in by_size.items()] for op in ops}
    memory = {op: [(n, f[op].max_rss / 2**20) for n, f in by_size.items()] for op in ops}
    body = [*_panel(times, "wall time against files", "s", 0),
            *_panel(memory, "peak RSS against files", "MiB", 560)]
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="1120" height="330" font-family="sans-serif">'
            '<rect width="100%" height="100%" fill="white"/>' + "".join(body) + "</svg>\n")


def write_plot(by_size: dict[int, dict[str, Timing]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(svg(by_size))
    os.replace(tmp, path)
