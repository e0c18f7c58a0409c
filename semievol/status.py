"""A summary of a workspace: what the CLI's `status` prints and the app's first page shows."""

from __future__ import annotations

from semievol.config import to_dict
from semievol.rounds import round_overview
from semievol.store import SCHEMA_VERSION, Workspace


def workspace_status(ws: Workspace) -> dict:
    task = ws.task
    rounds = [{k: r[k] for k in ("number", "status", "pseudo_labels", "calibration_labels",
                                 "selected")} for r in reversed(round_overview(ws))]
    return {
        "path": str(ws.path),
        "schema_version": SCHEMA_VERSION,
        "task": to_dict(task) if task else None,
        "splits": ws.split_counts(),
        "unlabeled_with_neighbours": ws.scalar(
            "SELECT COUNT(DISTINCT n.item_id) FROM neighbours n JOIN items i ON i.id = n.item_id "
            "WHERE i.split = 'unlabeled'"),
        "retrieval_k": ws.get_setting("retrieval_k"),
        "rounds": rounds,
        "decisions": ws.scalar("SELECT COUNT(*) FROM decisions"),
        "runs": ws.scalar("SELECT COUNT(*) FROM runs"),
    }
