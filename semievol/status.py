"""A summary of a workspace: what the CLI's `status` prints and the app's first page shows."""

from __future__ import annotations

from semievol.config import to_dict
from semievol.store import SCHEMA_VERSION, Workspace


def workspace_status(ws: Workspace) -> dict:
    task = ws.task
    rounds = [dict(r) for r in ws.query(
        "SELECT r.number, r.status, "
        "(SELECT COUNT(*) FROM pseudo_labels p WHERE p.round_id = r.id) AS pseudo_labels, "
        "(SELECT COUNT(*) FROM pseudo_labels p WHERE p.round_id = r.id AND p.selected) AS selected "
        "FROM rounds r ORDER BY r.number")]
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
