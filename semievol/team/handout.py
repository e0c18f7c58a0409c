"""Handing items to a team of reviewers: each item to one reviewer at a time, a share of
them to two (overlap, each reviewer blind to the other's decision), and the conflicts two
reviewers leave for a lead to adjudicate.

Overlap items are chosen by a hash of the item's id, not by a draw: the same items stay in
the overlap while the lead changes nothing, and raising the share only adds items.

A claim reserves an item for a reviewer while they look at it; it lapses after
CLAIM_SECONDS without a decision (a closed tab, a coffee), and the item goes back to the
queue. `claim_next` reads and claims in one write transaction, so two reviewers asking at
the same moment cannot be handed the same item (unless it is an overlap item, needed twice).

Which decision then trains is the workspace's decision rule (curation.decisions): the
adjudication, else the agreed decision, else the item is left out.
"""

from __future__ import annotations

import hashlib
import time
from typing import Sequence

from semievol.curation.decisions import record_decisions
from semievol.errors import SemiEvolError
from semievol.workspace.store import Workspace

CLAIM_SECONDS = 10 * 60
MAX_OVERLAP = 1.0


def overlap_share(ws: Workspace) -> float:
    """The share of items reviewed by two reviewers (0 = each item by one)."""
    return float(ws.get_setting("team_overlap", 0.0))


def set_overlap_share(ws: Workspace, share: float) -> None:
    if not 0.0 <= share <= MAX_OVERLAP:
        raise SemiEvolError(f"The overlap share is a fraction from 0 to 1 (0.2 = a fifth of "
                            f"the items go to two reviewers); got {share}.")
    with ws.transaction() as conn:
        ws.set_setting("team_overlap", share, conn)


def is_overlap(item_id: int, share: float) -> bool:
    """Whether an item goes to two reviewers at this share: its id's hash, read as a
    fraction, is below the share."""
    digest = hashlib.sha256(f"semievol-overlap:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < share


def reviews_needed(item_id: int, share: float) -> int:
    return 2 if is_overlap(item_id, share) else 1


def claim_next(ws: Workspace, round_id: int, reviewer: str, queue: Sequence[int], *,
               skip: Sequence[int] = (), at: float | None = None) -> int | None:
    """The item `reviewer` should look at now, claimed for them: the one they hold a live
    claim on and have not decided, else the first item of `queue` (minus `skip`) that they
    have not decided and that still needs a reviewer (decided and live claims by others
    counted against the reviews it needs); None when nothing is left for them."""
    at = time.time() if at is None else at
    share = overlap_share(ws)
    with ws.transaction() as conn:
        decided: dict[int, set[str]] = {}
        for r in conn.execute("SELECT item_id, reviewer FROM reviewer_decisions"):
            decided.setdefault(r["item_id"], set()).add(r["reviewer"])
        adjudicated = {r[0] for r in conn.execute("SELECT item_id FROM adjudications")}
        claimed: dict[int, set[str]] = {}
        mine = None
        for r in conn.execute("SELECT item_id, reviewer FROM claims WHERE round_id=? AND "
                              "claimed_at > ? ORDER BY claimed_at DESC",
                              (round_id, at - CLAIM_SECONDS)):
            if r["reviewer"] in decided.get(r["item_id"], ()):
                continue  # a claim ends with its decision
            claimed.setdefault(r["item_id"], set()).add(r["reviewer"])
            if r["reviewer"] == reviewer and mine is None and r["item_id"] not in skip \
                    and r["item_id"] in queue:
                mine = r["item_id"]
        if mine is not None:
            return mine
        skipped = set(skip)
        for item in queue:
            if item in skipped or item in adjudicated or reviewer in decided.get(item, ()):
                continue
            others = decided.get(item, set()) | claimed.get(item, set())
            if len(others) >= reviews_needed(item, share):
                continue
            conn.execute("INSERT INTO claims(round_id, item_id, reviewer, claimed_at) "
                         "VALUES(?,?,?,?) ON CONFLICT(round_id, item_id, reviewer) DO "
                         "UPDATE SET claimed_at=excluded.claimed_at",
                         (round_id, item, reviewer, at))
            return item
    return None


def release(ws: Workspace, round_id: int, reviewer: str, item_id: int) -> None:
    """Give a claimed item back (skipped): another reviewer may take it at once."""
    with ws.transaction() as conn:
        conn.execute("DELETE FROM claims WHERE round_id=? AND item_id=? AND reviewer=?",
                     (round_id, item_id, reviewer))


# -- conflicts and adjudication -----------------------------------------------------------------
def conflicts(ws: Workspace, round_id: int | None = None) -> list[dict]:
    """Items on which reviewers' standing decisions differ and no lead has adjudicated:
    [{item_id, external_id, question, pseudo_label, decisions: [{reviewer, action, label,
    note}]}], in item order."""
    rows = ws.query(
        "SELECT r.item_id, r.reviewer, r.action, r.label, r.note, r.round_id, i.external_id, "
        "i.question FROM reviewer_decisions r JOIN items i ON i.id = r.item_id "
        "WHERE r.item_id NOT IN (SELECT item_id FROM adjudications) ORDER BY r.item_id, r.id")
    by_item: dict[int, list] = {}
    for r in rows:
        by_item.setdefault(r["item_id"], []).append(r)
    found = []
    for item, decisions in by_item.items():
        if len({(d["action"], d["label"] or "") for d in decisions}) < 2:
            continue
        if round_id is not None and not any(d["round_id"] == round_id for d in decisions):
            continue
        pseudo = ws.query("SELECT label FROM pseudo_labels WHERE item_id=? ORDER BY round_id "
                          "DESC LIMIT 1", (item,))
        found.append({"item_id": item, "external_id": decisions[0]["external_id"],
                      "question": decisions[0]["question"],
                      "pseudo_label": pseudo[0]["label"] if pseudo else None,
                      "decisions": [{"reviewer": d["reviewer"], "action": d["action"],
                                     "label": d["label"], "note": d["note"]}
                                    for d in decisions]})
    return found


def adjudicate(ws: Workspace, item_id: int, action: str, *, lead: str,
               label: str | None = None, note: str | None = None,
               round_id: int | None = None) -> None:
    """A lead's decision on a conflict: in force over the reviewers' under the team rule.
    Refused unless `lead` is a lead's account (the app and the CLI both come here)."""
    role = ws.scalar("SELECT role FROM users WHERE name=?", (lead,))
    if role != "lead":
        raise SemiEvolError(f"{lead!r} is not a lead of this workspace: only a lead "
                            "adjudicates (`semievol users list` shows the roles).")
    if action == "clear":
        raise SemiEvolError("An adjudication decides: accept, reject or relabel.")
    record_decisions(ws, [item_id], action, reviewer=lead, label=label, note=note,
                     round_id=round_id, adjudication=True)
