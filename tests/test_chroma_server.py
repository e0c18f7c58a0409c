"""The vector store on a Chroma server (`chroma run` on 127.0.0.1, started here): the same
neighbours as the workspace's own folder, workspaces kept apart, a dead server refused."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FakeEmbedder
from server_support import free_port

from semievol.errors import SemiEvolError
from semievol.method.retrieval import CHROMA_SERVER, index_workspace, set_chroma_server


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory):
    import chromadb

    port = free_port()
    folder = tmp_path_factory.mktemp("chroma-server")
    chroma = Path(sys.executable).with_name("chroma")
    process = subprocess.Popen([str(chroma), "run", "--path", str(folder), "--host",
                                "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=port).heartbeat()
                break
            except Exception:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError("chroma run did not start")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)


def _neighbours(ws):
    return ws.query("SELECT item_id, rank, neighbour_id, ROUND(similarity, 5) AS s "
                    "FROM neighbours ORDER BY item_id, rank")


def _assert_same_neighbours(got, expected):
    """Same similarities rank by rank; the same neighbours wherever the similarity is not tied
    (the fake embedder gives ties, and the order among tied neighbours is the index's own)."""
    assert [(i, r, s) for i, r, _, s in got] == [(i, r, s) for i, r, _, s in expected]
    def untied(rows):
        by_item: dict[int, list] = {}
        for item, _, neighbour, sim in rows:
            by_item.setdefault(item, []).append((neighbour, sim))
        return {item: {n for n, s in pairs if [t for _, t in pairs].count(s) == 1
                       and s > pairs[-1][1]}
                for item, pairs in by_item.items()}
    assert untied(got) == untied(expected)


def test_the_server_gives_the_same_neighbours(filled_workspace, chroma_url):
    ws = filled_workspace
    local = [tuple(r) for r in _neighbours(ws)]
    set_chroma_server(ws, chroma_url)
    done = index_workspace(ws, FakeEmbedder(), k=3)
    assert done["embedded"] == ws.scalar("SELECT COUNT(*) FROM items")  # fresh on the server
    _assert_same_neighbours([tuple(r) for r in _neighbours(ws)], local)
    again = index_workspace(ws, FakeEmbedder(), k=3)
    assert again["embedded"] == 0 and again["queried"] == 0


def test_workspaces_on_one_server_stay_apart(filled_workspace, chroma_url, tmp_path,
                                             small_task_files, task):
    import chromadb

    from semievol.workspace.imports import ColumnMapping, import_file
    from semievol.workspace.store import Workspace

    set_chroma_server(filled_workspace, chroma_url)
    index_workspace(filled_workspace, FakeEmbedder(), k=3)
    with Workspace(tmp_path / "other", create=True) as other:
        import_file(other, small_task_files["labeled"], "labeled", task=task,
                    mapping=ColumnMapping(question="text", answer="label", id="id"))
        set_chroma_server(other, chroma_url)
        index_workspace(other, FakeEmbedder(), k=3)
        ids = {filled_workspace.get_setting("workspace_id"), other.get_setting("workspace_id")}
    assert len(ids) == 2
    host, port = chroma_url.rsplit(":", 1)
    names = {c.name for c in chromadb.HttpClient(host="127.0.0.1", port=int(port))
             .list_collections()}
    assert all(any(i in n for n in names) for i in ids)


def test_a_dead_server_is_refused_and_nothing_changes(filled_workspace):
    before = [tuple(r) for r in _neighbours(filled_workspace)]
    with pytest.raises(SemiEvolError, match="No Chroma server answers"):
        set_chroma_server(filled_workspace, f"http://127.0.0.1:{free_port()}")
    assert not filled_workspace.get_setting(CHROMA_SERVER)
    assert [tuple(r) for r in _neighbours(filled_workspace)] == before
