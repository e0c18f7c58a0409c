"""Retrieval: embeddings in Chroma, k labeled neighbours per item, incremental re-runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from semievol.errors import SemiEvolError
from semievol.method.retrieval import _client, index_workspace, item_embeddings, neighbours_of
from semievol.views.status import workspace_status


def neighbour_rows(ws):
    rows = ws.query("SELECT n.item_id, n.rank, n.neighbour_id, n.similarity, i.split AS split, "
                    "j.split AS neighbour_split FROM neighbours n "
                    "JOIN items i ON i.id = n.item_id JOIN items j ON j.id = n.neighbour_id "
                    "ORDER BY n.item_id, n.rank")
    by_item: dict[int, list] = {}
    for r in rows:
        by_item.setdefault(r["item_id"], []).append(dict(r))
    return by_item


def test_index_stores_k_labeled_neighbours(filled_workspace, fake_embedder):
    ws = filled_workspace
    by_item = neighbour_rows(ws)
    query_ids = [r[0] for r in ws.query("SELECT id FROM items WHERE split != 'labeled'")]
    assert sorted(by_item) == sorted(query_ids) and len(query_ids) == 29
    labeled = [r[0] for r in ws.query("SELECT id FROM items WHERE split='labeled' ORDER BY id")]
    texts = {r[0]: r[1] for r in ws.query("SELECT id, question FROM items")}
    pool = fake_embedder.embed([texts[i] for i in labeled])
    for item_id, rows in by_item.items():
        assert [r["rank"] for r in rows] == [0, 1, 2]
        assert all(r["neighbour_split"] == "labeled" for r in rows)
        sims = [r["similarity"] for r in rows]
        assert all(-1.0 - 1e-5 <= s <= 1.0 + 1e-5 for s in sims)
        assert sims == sorted(sims, reverse=True)
        # Exactly the brute-force top 3 cosine similarities, each matching its neighbour.
        exact = pool @ fake_embedder.embed([texts[item_id]])[0]
        np.testing.assert_allclose(sims, np.sort(exact)[::-1][:3], atol=1e-5)
        for r in rows:
            assert r["similarity"] == pytest.approx(exact[labeled.index(r["neighbour_id"])],
                                                    abs=1e-5)
    assert ws.get_setting("retrieval_k") == 3
    assert not ws.query("SELECT 1 FROM neighbours n JOIN items i ON i.id = n.item_id "
                        "WHERE i.split = 'labeled'")


def test_neighbours_are_meaningful_with_fake_embedder(filled_workspace):
    ws = filled_workspace
    item = ws.query("SELECT id FROM items WHERE external_id='U00'")[0][0]  # refund / bill
    found = neighbours_of(ws, item)
    assert [n["rank"] for n in found] == [0, 1, 2]
    assert found[0]["answer"] == "billing"
    assert set(found[0]) >= {"similarity", "external_id", "question", "answer"}
    assert len(neighbours_of(ws, item, limit=1)) == 1


def test_second_run_does_no_work(filled_workspace, fake_embedder):
    before = list(neighbour_rows(filled_workspace).items())
    calls = len(fake_embedder.calls)
    done = index_workspace(filled_workspace, fake_embedder, k=3)
    assert done == {"embedded": 0, "pool": 12, "queried": 0}
    assert len(fake_embedder.calls) == calls  # nothing was embedded again
    assert list(neighbour_rows(filled_workspace).items()) == before


def test_new_labeled_item_triggers_requery(filled_workspace, fake_embedder):
    ws = filled_workspace
    with ws.transaction() as conn:
        new_id = conn.execute(
            "INSERT INTO items(external_id, split, question, answer) VALUES(?,?,?,?)",
            ("L-new", "labeled", "refund the double charge on my bill", "billing")).lastrowid
    done = index_workspace(ws, fake_embedder, k=3)
    assert done == {"embedded": 1, "pool": 13, "queried": 29}
    target = ws.query("SELECT id FROM items WHERE external_id='U00'")[0][0]
    assert neighbours_of(ws, target)[0]["id"] == new_id  # same words: the nearest now
    assert index_workspace(ws, fake_embedder, k=3)["queried"] == 0


def test_changed_k_and_changed_text_requery(filled_workspace, fake_embedder):
    ws = filled_workspace
    done = index_workspace(ws, fake_embedder, k=2)
    assert done["queried"] == 29 and done["embedded"] == 0
    assert ws.scalar("SELECT MAX(rank) FROM neighbours") == 1
    assert ws.get_setting("retrieval_k") == 2
    with ws.transaction() as conn:
        conn.execute("UPDATE items SET question='router power cable' WHERE external_id='U00'")
    done = index_workspace(ws, fake_embedder, k=2)
    assert done["embedded"] == 1 and done["queried"] == 29
    item = ws.query("SELECT id FROM items WHERE external_id='U00'")[0][0]
    assert neighbours_of(ws, item)[0]["answer"] == "equipment"


def test_item_moved_out_of_labeled_leaves_the_pool(filled_workspace, fake_embedder):
    ws = filled_workspace
    moved = ws.query("SELECT id FROM items WHERE external_id='L00'")[0][0]
    with ws.transaction() as conn:
        conn.execute("UPDATE items SET split='unlabeled', answer=NULL WHERE id=?", (moved,))
    done = index_workspace(ws, fake_embedder, k=3)
    assert done["pool"] == 11 and done["queried"] == 30
    assert ws.scalar("SELECT COUNT(*) FROM neighbours WHERE neighbour_id=?", (moved,)) == 0
    assert len(neighbours_of(ws, moved)) == 3
    pool = _client(ws).get_collection("labeled")
    assert str(moved) not in set(pool.get(include=[])["ids"])
    assert len(pool.get(include=[])["ids"]) == 11


def test_item_embeddings_in_order_and_missing(filled_workspace, fake_embedder):
    ws = filled_workspace
    ids = [r[0] for r in ws.query("SELECT id FROM items ORDER BY id DESC LIMIT 3")]
    texts = [ws.scalar("SELECT question FROM items WHERE id=?", (i,)) for i in ids]
    got = item_embeddings(ws, fake_embedder, ids)
    np.testing.assert_allclose(got, fake_embedder.embed(texts), atol=1e-6)
    assert item_embeddings(ws, fake_embedder, []).shape == (0, 0)
    with pytest.raises(SemiEvolError, match="not embedded"):
        item_embeddings(ws, fake_embedder, ids + [99999])


def test_index_without_labeled_items_is_refused(workspace, fake_embedder):
    with workspace.transaction() as conn:
        conn.execute("INSERT INTO items(external_id, split, question) VALUES('u','unlabeled','q')")
    with pytest.raises(SemiEvolError, match="no labeled items"):
        index_workspace(workspace, fake_embedder, k=3)
    assert workspace.scalar("SELECT COUNT(*) FROM neighbours") == 0


def test_progress_is_reported(workspace, task, small_task_files, fake_embedder):
    from semievol.workspace.imports import ColumnMapping, import_file

    import_file(workspace, small_task_files["labeled"], "labeled",
                mapping=ColumnMapping(question="text", answer="label", id="id"), task=task)
    import_file(workspace, small_task_files["test"], "test",
                mapping=ColumnMapping(question="text", answer="label", id="id"))
    calls = []
    index_workspace(workspace, fake_embedder, k=3, progress=lambda *a: calls.append(a))
    assert (21, 21, "embedding items") in calls
    assert (9, 9, "retrieving neighbours") in calls


def test_status_counts_neighbours(filled_workspace):
    status = workspace_status(filled_workspace)
    assert status["splits"] == {"labeled": 12, "unlabeled": 20, "test": 9, "calibration": 0}
    assert status["unlabeled_with_neighbours"] == 20
    assert status["retrieval_k"] == 3
    assert status["task"]["labels"] == ["billing", "outage", "equipment"]
    assert status["rounds"] == [] and status["decisions"] == 0


def test_chroma_keeps_no_machine_path(filled_workspace, tmp_path):
    ws = filled_workspace
    client = _client(ws)
    for name in ("items", "labeled"):
        config = json.dumps(client.get_collection(name).configuration_json)
        assert str(tmp_path) not in config and "/tmp" not in config
    raw = (ws.path / "chroma" / "chroma.sqlite3").read_bytes()
    assert str(tmp_path).encode() not in raw
    assert str(ws.path).encode() not in raw


def test_real_bundled_embedder(workspace, task, tmp_path, write_csv):
    from semievol.method.retrieval import SentenceTransformerEmbedder
    from semievol.workspace.imports import ColumnMapping, import_file

    labeled = [
        ("b1", "I was charged twice for my monthly subscription, please refund me", "billing"),
        ("b2", "My invoice shows a late payment fee I should not have to pay", "billing"),
        ("o1", "There is no internet connection at my house since this morning", "outage"),
        ("o2", "The broadband keeps disconnecting every few minutes", "outage"),
        ("e1", "The router's lights are flashing red and it will not turn on", "equipment"),
        ("e2", "My modem is overheating and I need a replacement device", "equipment"),
    ]
    queries = [("q-bill", "Why did you take two payments from my bank account this month?"),
               ("q-out", "Web pages will not load, the whole network seems to be down"),
               ("q-eq", "The wireless hub makes a clicking sound and gets very hot")]
    mapping = ColumnMapping(question="text", answer="label", id="id")
    import_file(workspace, write_csv(tmp_path / "l.csv", [
        {"id": i, "text": t, "label": lab} for i, t, lab in labeled]), "labeled",
        mapping=mapping, task=task)
    import_file(workspace, write_csv(tmp_path / "u.csv", [
        {"id": i, "text": t} for i, t in queries]), "unlabeled",
        mapping=ColumnMapping(question="text", answer=None, id="id"))

    embedder = SentenceTransformerEmbedder("bundled", device="cpu")
    assert embedder.name == "bundled"
    vectors = embedder.embed(["a short text", "another one"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    done = index_workspace(workspace, embedder, k=2)
    assert done == {"embedded": 9, "pool": 6, "queried": 3}
    nearest = {}
    for external_id, _ in queries:
        item = workspace.query("SELECT id FROM items WHERE external_id=?", (external_id,))[0][0]
        nearest[external_id] = neighbours_of(workspace, item)[0]["answer"]
    assert nearest["q-bill"] == "billing"
    assert nearest == {"q-bill": "billing", "q-out": "outage", "q-eq": "equipment"}

    # The saved collection config names the embedder portably, never by a path.
    config = _client(workspace).get_collection("labeled").configuration_json
    assert config["embedding_function"] == {"type": "known", "name": "semievol-local",
                                            "config": {"embedder": "bundled"}}
    raw = (workspace.path / "chroma" / "chroma.sqlite3").read_bytes()
    assert str(tmp_path).encode() not in raw and b"site-packages" not in raw
