"""The scaling group's rows (benchmarks/metrics_scale.py) from given figures: each slope is
the least-squares one, and the full deploy's slope is set beside cp's, with its target,
and beside cp's followed by a sync (deploy syncs before it commits), without one."""

from __future__ import annotations

import pytest

from benchmarks.measure import Timing
from benchmarks.metrics_scale import CP_SYNCED, PEERS, rows_for


def _figures(n: int) -> dict[str, Timing]:
    per_file = {"transcode": 4, "extract": 3, "deploy": 6, "deploy (cold store)": 9, "verify": 5,
                "status": 0, "rpm -i": 10, "rpm -V": 1, "cp -a --reflink": 4, CP_SYNCED: 5}
    figures = {op: Timing(1.0 + k * n / 1e6, 10_000_000 + 100 * n) for op, k in per_file.items()}
    figures["status (first)"] = Timing(0.2, 1)
    return figures


def test_the_deploy_slope_is_set_beside_cp_and_beside_cp_then_sync() -> None:
    rows = {(r.metric, r.peer): r for r in rows_for({n: _figures(n) for n in (10_000, 50_000)})}
    assert {op for op in PEERS} <= {m.split(": ")[1].rsplit(" time", 1)[0] for m, _ in rows
                                    if m.startswith("scale 10k files:") and m.endswith(" time")}
    plain = rows[("scale slope: deploy time per 1000 files", "cp -a --reflink")]
    synced = rows[("scale slope: deploy time per 1000 files", CP_SYNCED)]
    assert (plain.rpmimg, plain.peer_value, plain.ratio) == pytest.approx((0.006, 0.004, 1.5))
    assert plain.target == "<= 1.2" and plain.met is False
    assert (synced.rpmimg, synced.peer_value, synced.ratio) == pytest.approx((0.006, 0.005, 1.2))
    assert synced.target == "" and synced.met is None and "sync" in synced.note
