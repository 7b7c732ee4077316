"""Where the index's vectors live: FAISS in the run folder (the default), or a Milvus collection
(a server or cluster at ``milvus://HOST:PORT``, or a Milvus Lite file ``PATH.db``).

Both stores hold unit vectors under integer ids ``0…n-1`` (the row of the index's metadata
table) and answer top-k inner-product queries, so every caller sees one interface.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from harmonixr._files import atomic_write

# ``auto`` switches from exact search to HNSW at this many vectors. bench/search.py on 2 cores
# (100,000 × 128 random unit vectors): exact FAISS, one thread, ~1.6 ms per query and linear in
# the corpus (≈ 17 ns a vector); HNSW needs efSearch 512 for recall@10 ≥ 0.95 on such vectors
# and then also takes ~1.6 ms. Exact search stays a small part of answering a query (embedding
# the query file costs ≥ 50 ms) until about a million vectors (~17 ms), so only there is
# approximate recall worth trading for speed.
HNSW_MIN = 1_000_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 512  # recall@10 ≥ 0.95 even on unclustered vectors
# one query: a single thread (FAISS's OpenMP start-up costs more than the search); batches of
# at least this many queries use every core
BATCH_QUERIES = 16
KINDS = ("auto", "flat", "hnsw")


class VectorStore(Protocol):
    def __len__(self) -> int: ...

    def add(self, vectors: np.ndarray, rows: list[dict[str, Any]], first_id: int) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids), each (Q, k); id -1 where fewer than k vectors exist."""
        ...

    def save(self, root: Path) -> None: ...

    def describe(self) -> dict[str, Any]: ...


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # a dependency; only a broken install lacks it
        raise ImportError("the index needs faiss: pip install faiss-cpu") from exc
    return faiss


class FaissStore:
    """Vectors in ``embeddings.npy`` (the source of truth, plain numpy), searched by an exact
    ``IndexFlatIP`` or an ``IndexHNSWFlat`` (saved as ``hnsw.faiss`` so it is built once)."""

    VECTORS = "embeddings.npy"
    GRAPH = "hnsw.faiss"

    def __init__(self, dim: int, kind: str = "auto", vectors: np.ndarray | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
        self.dim, self.requested = dim, kind
        self.vectors = np.zeros((0, dim), np.float32) if vectors is None else vectors
        self._index: Any = None
        self._built_kind = ""

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def kind(self) -> str:
        if self.requested == "auto":
            return "hnsw" if len(self) >= HNSW_MIN else "flat"
        return self.requested

    def _new_index(self) -> Any:
        faiss = _faiss()
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            index = faiss.IndexFlatIP(self.dim)
        return index

    def _ready(self) -> Any:
        if self._index is None or self._built_kind != self.kind:
            faiss = _faiss()
            self._index = self._new_index()
            if len(self):
                faiss.omp_set_num_threads(os.cpu_count() or 1)
                self._index.add(np.ascontiguousarray(self.vectors, np.float32))
            self._built_kind = self.kind
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = HNSW_EF_SEARCH
        return self._index

    def add(self, vectors: np.ndarray, rows: list[dict[str, Any]], first_id: int) -> None:
        if first_id != len(self):
            raise ValueError(f"ids must continue at {len(self)}, got {first_id}")
        vectors = np.ascontiguousarray(vectors, np.float32).reshape(-1, self.dim)
        before = self.kind
        self.vectors = np.concatenate([np.asarray(self.vectors, np.float32), vectors])
        if self._index is not None and self.kind == before:
            self._index.add(vectors)  # incremental: no rebuild
        else:
            self._index = None  # crossed HNSW_MIN: rebuilt on next use

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        if len(self) == 0 or k < 1:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        index = self._ready()
        threads = 1 if len(queries) < BATCH_QUERIES else (os.cpu_count() or 1)
        _faiss().omp_set_num_threads(threads)
        sims, ids = index.search(queries, min(k, len(self)))
        return sims, ids.astype(np.int64)

    def save(self, root: Path) -> None:
        vectors = np.asarray(self.vectors, np.float32)
        atomic_write(root / self.VECTORS, lambda tmp: np.save(tmp, vectors))
        graph = root / self.GRAPH
        if self.kind == "hnsw":
            faiss = _faiss()
            index = self._ready()
            atomic_write(graph, lambda tmp: faiss.write_index(index, str(tmp)))
        else:
            graph.unlink(missing_ok=True)

    @classmethod
    def load(cls, root: Path, info: dict[str, Any], rows: int) -> FaissStore:
        path = root / cls.VECTORS
        if not path.is_file():
            raise ValueError(f"{root}: index has no {cls.VECTORS}; rebuild it")
        vectors = np.load(path)
        if vectors.shape[0] < rows:
            raise ValueError(f"{path}: {vectors.shape[0]} vectors for {rows} items; rebuild it")
        store = cls(int(info["dim"]), info.get("kind", "auto"), vectors[:rows])
        graph = root / cls.GRAPH
        if store.kind == "hnsw" and graph.is_file():
            index = _faiss().read_index(str(graph))
            if index.ntotal == rows:  # else an add was interrupted: rebuilt on first use
                store._index, store._built_kind = index, "hnsw"
        return store

    def describe(self) -> dict[str, Any]:
        return {"store": "faiss", "kind": self.requested, "active_kind": self.kind}


# ---------------------------------------------------------------------- Milvus


def milvus_uri(spec: str) -> str:
    """``milvus://HOST:PORT`` → ``http://HOST:PORT``; a ``.db`` path (Milvus Lite) absolute."""
    if spec.startswith("milvus://"):
        return "http://" + spec.removeprefix("milvus://")
    if spec.startswith(("http://", "https://")):
        return spec
    if spec.endswith(".db"):
        return str(Path(spec).expanduser().resolve())
    raise ValueError(
        f"store must be 'faiss', milvus://HOST:PORT or a Milvus Lite file PATH.db: {spec}"
    )


def _milvus_client(uri: str) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise ImportError(
            "the Milvus store needs pymilvus (and milvus-lite for a local .db file): "
            "pip install 'harmonixr[milvus]'"
        ) from exc
    return MilvusClient(uri=uri)


class MilvusStore:
    """A Milvus collection: ``id`` (the row), ``vector`` (inner product) and the metadata as
    plain fields, so that other services can query it too."""

    BATCH = 2000

    def __init__(self, uri: str, collection: str, dim: int, create: bool = False) -> None:
        self.uri, self.collection, self.dim = uri, collection, dim
        self.client = _milvus_client(uri)
        if create:
            if self.client.has_collection(collection):
                self.client.drop_collection(collection)
            self.client.create_collection(
                collection,
                dimension=dim,
                metric_type="IP",
                auto_id=False,
                id_type="int",
                consistency_level="Strong",
            )
        elif not self.client.has_collection(collection):
            raise ValueError(f"{uri}: no collection {collection!r}; rebuild the index")
        self._count: int | None = None

    def __len__(self) -> int:
        if self._count is None:
            res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
            self._count = int(res[0]["count(*)"])
        return self._count

    def add(self, vectors: np.ndarray, rows: list[dict[str, Any]], first_id: int) -> None:
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        for b0 in range(0, len(vectors), self.BATCH):
            data = [
                {"id": first_id + i, "vector": vectors[i].tolist(), **rows[i]}
                for i in range(b0, min(b0 + self.BATCH, len(vectors)))
            ]
            self.client.upsert(self.collection, data)  # a retried add overwrites, never doubles
        # seal what was written so that it is indexed: unsealed rows are searched by brute
        # force (bench/search.py, Milvus Lite at 20,000 vectors: ~330 ms a query, ~50 after)
        self.client.flush(self.collection)
        self._count = None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.asarray(queries, np.float32).reshape(-1, self.dim)
        sims = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if k < 1 or len(queries) == 0:
            return sims, ids
        hits = self.client.search(
            self.collection, data=queries.tolist(), limit=k, search_params={"metric_type": "IP"}
        )
        for q, row in enumerate(hits):
            for j, hit in enumerate(row[:k]):
                sims[q, j], ids[q, j] = float(hit["distance"]), int(hit["id"])
        return sims, ids

    def save(self, root: Path) -> None:
        """Nothing to write locally: the server keeps the vectors."""

    def close(self) -> None:
        self.client.close()

    def describe(self) -> dict[str, Any]:
        return {"store": "milvus", "uri": self.uri, "collection": self.collection}
