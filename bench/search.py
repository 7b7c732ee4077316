"""Nearest-neighbour search speed against numpy brute force, measured in the same run.

    python bench/search.py [--n 100000] [--dim 128] [--queries 200] [--no-milvus]

Random unit vectors (the hardest case for HNSW: no clusters), random unit queries, top 10 by
inner product. One query at a time (median latency): numpy (matrix-vector product +
argpartition; with every BLAS thread, numpy's default, and with one), exact FAISS through
the index's own store (1 thread, as it searches one query) and with every thread, HNSW at
several efSearch values with recall@10 against the exact answer; then a batch of all queries
at once; then exact single-query latency by corpus size (what sets HNSW_MIN in
search/store.py); then Milvus Lite where pymilvus and milvus-lite are installed.
Goals: exact FAISS ≤ numpy with identical results; HNSW ≥ 5× numpy with
recall@10 ≥ 0.95.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from harmonixr.search import store as st


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_topk(v: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    sims = v @ q
    top = np.argpartition(-sims, k)[:k]
    return top[np.argsort(-sims[top], kind="stable")]


def per_query(fn, queries: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """Median seconds per query and the ids found."""
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(fn(q))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), found


def recall(found: list[np.ndarray], truth: list[np.ndarray], k: int) -> float:
    return float(
        np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)])
    )


def ms(s: float) -> str:
    return f"{s * 1000:8.3f} ms"


def milvus_lite(
    v: np.ndarray, queries: np.ndarray, truth: list[np.ndarray], k: int, t_np: float
) -> None:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        print("\nMilvus Lite: not installed (pip install 'harmonixr[milvus]'), skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.db")
        t0 = time.perf_counter()
        store = st.MilvusStore(db, "bench", v.shape[1], create=True)
        store.add(v, [{} for _ in range(len(v))], 0)  # inserts, then flushes (seals, indexes)
        insert = time.perf_counter() - t0
        store.close()
        t0 = time.perf_counter()
        store = st.MilvusStore(db, "bench", v.shape[1])
        store.search(queries[:1], k)
        reopen = time.perf_counter() - t0
        t_one, found = per_query(lambda q: store.search(q[None], k)[1][0], queries[:50])
        t0 = time.perf_counter()
        store.search(queries, k)
        batch = time.perf_counter() - t0
        store.close()
    r = recall(found, truth[:50], k)
    print(f"\nMilvus Lite: insert + flush {insert:.1f} s, reopen + first query {reopen:.1f} s")
    print(f"  one query {ms(t_one)}  {t_np / t_one:5.2f}× numpy, recall@{k} {r:.3f}")
    print(f"  batch of {len(queries)}: {len(queries) / batch:,.0f} queries/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--no-milvus", action="store_true")
    args = ap.parse_args()
    import faiss

    rng = np.random.default_rng(0)
    v, queries, k = unit(rng, args.n, args.dim), unit(rng, args.queries, args.dim), args.k
    cores = os.cpu_count() or 1
    print(f"{args.n:,} × {args.dim} unit vectors, {args.queries} queries, top {k}, {cores} cores")

    t_np, truth = per_query(lambda q: numpy_topk(v, q, k), queries)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        t_np1, _ = per_query(lambda q: numpy_topk(v, q, k), queries)
    flat = st.FaissStore(args.dim, "flat", v)
    flat.search(queries[:1], k)  # build
    t_flat, got = per_query(lambda q: flat.search(q[None], k)[1][0], queries)
    same = all(np.array_equal(a, b) for a, b in zip(got, truth, strict=True))
    print(f"\none query at a time (median)\n  numpy brute force        {ms(t_np)}")
    print(f"  numpy, 1 BLAS thread     {ms(t_np1)}  {t_np / t_np1:5.2f}× numpy")
    print(f"  FAISS exact, 1 thread    {ms(t_flat)}  {t_np / t_flat:5.2f}× numpy, same ids: {same}")
    index = flat._ready()
    faiss.omp_set_num_threads(cores)
    t_many, _ = per_query(lambda q: index.search(q[None], k)[1][0], queries)
    print(f"  FAISS exact, {cores} threads  {ms(t_many)}  {t_np / t_many:5.2f}× numpy")

    t0 = time.perf_counter()
    hnsw = st.FaissStore(args.dim, "hnsw", v)
    graph = hnsw._ready()
    build = time.perf_counter() - t0
    print(
        f"  HNSW (M={st.HNSW_M}, efConstruction={st.HNSW_EF_CONSTRUCTION}), built in {build:.1f} s"
    )
    for ef in sorted({64, 128, 256, st.HNSW_EF_SEARCH}):
        graph.hnsw.efSearch = ef
        faiss.omp_set_num_threads(1)
        t_h, found = per_query(lambda q: graph.search(q[None], k)[1][0], queries)
        mark = "  (default)" if ef == st.HNSW_EF_SEARCH else ""
        print(
            f"    efSearch {ef:3d}            {ms(t_h)}  {t_np / t_h:5.1f}× numpy "
            f"({t_np1 / t_h:4.1f}× 1-thread numpy), recall@{k} {recall(found, truth, k):.3f}{mark}"
        )

    print(f"\nbatch of {args.queries} queries")
    t0 = time.perf_counter()
    sims = queries @ v.T
    np.argpartition(-sims, k, axis=1)[:, :k]
    t_npb = time.perf_counter() - t0
    print(f"  numpy        {args.queries / t_npb:10,.0f} queries/s")
    for name, s in (("FAISS exact", flat), ("HNSW", hnsw)):
        t0 = time.perf_counter()
        s.search(queries, k)
        t_b = time.perf_counter() - t0
        print(f"  {name:12s} {args.queries / t_b:10,.0f} queries/s  {t_npb / t_b:5.1f}× numpy")

    print("\nexact FAISS, one query, by corpus size (HNSW_MIN is", f"{st.HNSW_MIN:,})")
    for n in (1_000, 10_000, 50_000, args.n):
        part = st.FaissStore(args.dim, "flat", v[:n])
        part.search(queries[:1], k)
        t_n, _ = per_query(lambda q, s=part: s.search(q[None], k)[1][0], queries)
        t_nn, _ = per_query(lambda q, n=n: numpy_topk(v[:n], q, k), queries)
        print(f"  {n:>8,}  FAISS {ms(t_n)}   numpy {ms(t_nn)}")

    if not args.no_milvus:
        milvus_lite(v, queries, truth, k, t_np)


if __name__ == "__main__":
    main()
