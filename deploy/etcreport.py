"""`rpmimg diff --etc`: what the /etc merge of a deployment did, read back from its /usr."""

from __future__ import annotations

from dataclasses import dataclass

from deploy.errors import DeploymentError
from deploy.etcbase import read_merge_record
from deploy.etcmerge import EtcMerge
from deploy.overview import compared_pair
from deploy.system import System


@dataclass(frozen=True)
class EtcDiff:
    """The /etc differences between two deployments' roots, with the newer one's merge."""

    old: str
    new: str
    merged_from: str | None  # whose root new's /etc was merged from (None: a fresh root)
    merge: EtcMerge | None   # None: new was deployed before rpmimg merged /etc

    def to_json(self) -> dict[str, object]:
        return {
            "old": self.old, "new": self.new, "merged_from": self.merged_from,
            "recorded": self.merge is not None,
            "actions": self.merge.to_json() if self.merge else [],
            "notable": EtcMerge(self.merge.notable()).to_json() if self.merge else [],
        }

    def lines(self) -> list[str]:
        if self.merge is None:
            return [f"deployment {self.new} records no /etc merge (deployed before rpmimg merged /etc)"]
        source = f"deployment {self.merged_from}'s root" if self.merged_from else "a fresh root"
        notable = self.merge.notable()
        out = [f"deployment {self.new}: /etc merged from {source}: {len(self.merge.actions)} paths"
               f" changed, {len(notable)} to look at"]
        if self.merged_from is not None and self.merged_from != self.old:
            out.append(f"note: {self.new}'s /etc was merged from {self.merged_from}, not {self.old}")
        for a in (*notable, *(a for a in self.merge.actions if a not in notable)):
            mark = "!" if a in notable else " "
            out.append(f"{mark} {a.action:<20} {a.path}  [{a.package or '-'}] {a.detail}")
        return out


def etc_diff(system: System, old: str | None = None, new: str | None = None) -> EtcDiff:
    """The /etc merge recorded in deployment new (defaults as for `diff`)."""
    old, new = compared_pair(system, old, new)
    try:
        record = read_merge_record(system.layout.deployment(new))
    except (OSError, ValueError) as e:
        raise DeploymentError(f"deployment {new}: unreadable /etc merge record: {e}") from e
    if record is None:
        return EtcDiff(old, new, None, None)
    return EtcDiff(old, new, record.merged_from, record.merge)
