"""The pool a round labels: the unlabeled items still to pseudo-label, and the calibration
slice (labeled by the collaborators as if unlabeled, to measure their precision)."""

from __future__ import annotations

from semievol.curation.decisions import current_decisions
from semievol.workspace.items import split_ids
from semievol.workspace.store import Workspace


def pool_item_ids(ws: Workspace, round_number: int, limit: int | None = None) -> list[int]:
    """The items round `round_number` labels: unlabeled items not selected in an earlier
    round and (from round 2 on) not accepted or relabeled by a reviewer, at most `limit` of
    them (the round config's `unlabeled_limit`; None = all); then the calibration items."""
    ids = [r[0] for r in ws.query(
        "SELECT i.id FROM items i WHERE i.split='unlabeled' AND NOT EXISTS ("
        " SELECT 1 FROM pseudo_labels p JOIN rounds r ON r.id = p.round_id"
        " WHERE p.item_id = i.id AND p.selected = 1 AND r.number < ?) ORDER BY i.id",
        (round_number,))]
    decided = {i for i, d in current_decisions(ws).items()
               if d["action"] in ("accept", "relabel") and round_number > 1}
    ids = [i for i in ids if i not in decided]
    if limit:
        ids = ids[:limit]
    return ids + split_ids(ws, "calibration")
