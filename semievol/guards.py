"""Guards before training: answer format validation and test leakage (near-duplicates)."""

from __future__ import annotations

import json

from semievol.config import TaskConfig
from semievol.errors import SemiEvolError
from semievol.store import Workspace


def validate_training_set(task: TaskConfig, examples: list[dict]) -> None:
    """Every training answer must be a well-formed answer for its item."""
    problems = []
    for e in examples:
        answer = e["answer"]
        if answer is None or not str(answer).strip():
            problems.append(f"item {e['item_id']} ({e['source']}): empty answer")
        elif task.kind == "choice" and answer not in (e["options"] or []):
            problems.append(f"item {e['item_id']} ({e['source']}): answer {answer!r} is not "
                            f"one of its options")
    if problems:
        raise SemiEvolError(f"{len(problems)} training example(s) have malformed answers; "
                            "relabel or reject them, then train again.", problems[:50])

def flag_leakage(ws: Workspace, round_id: int, embedder, *, similarity: float) -> int:
    """Flag pseudo-labeled items whose question nearly duplicates a test item (cosine >=
    `similarity`); flagged items are left out of training unless a reviewer accepts them."""
    from semievol.retrieval import item_embeddings

    pool = [r[0] for r in ws.query(
        "SELECT item_id FROM pseudo_labels WHERE round_id=? ORDER BY item_id", (round_id,))]
    tests = [r[0] for r in ws.query("SELECT id FROM items WHERE split='test' ORDER BY id")]
    flags = []
    if pool and tests:
        test_vectors = item_embeddings(ws, embedder, tests)
        for start in range(0, len(pool), 2048):
            chunk = pool[start:start + 2048]
            sims = item_embeddings(ws, embedder, chunk) @ test_vectors.T   # (chunk, tests)
            best = sims.argmax(axis=1)
            for row, item_id in enumerate(chunk):
                value = float(sims[row, best[row]])
                if value >= similarity:
                    flags.append((round_id, item_id, "near_duplicate_test", json.dumps(
                        {"test_item": tests[best[row]], "similarity": round(value, 4)})))
    with ws.transaction() as conn:
        conn.execute("DELETE FROM flags WHERE round_id=? AND kind='near_duplicate_test'",
                     (round_id,))
        conn.executemany("INSERT INTO flags(round_id, item_id, kind, detail) VALUES(?,?,?,?)",
                         flags)
    return len(flags)

def leakage_flags(ws: Workspace, round_id: int) -> list[dict]:
    rows = ws.query("SELECT f.item_id, f.detail, i.question FROM flags f JOIN items i ON "
                    "i.id = f.item_id WHERE f.round_id=? AND f.kind='near_duplicate_test'",
                    (round_id,))
    return [{"item_id": r["item_id"], "question": r["question"], **json.loads(r["detail"])}
            for r in rows]
