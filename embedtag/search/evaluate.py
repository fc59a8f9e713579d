"""How good an index is: leave-one-out precision@k / mAP@k from labels, recall@k against exact search."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embedtag.errors import DataError, IncompatibleError, ParamError
from embedtag.metrics import retrieval_metrics
from embedtag.search.index import SimilarityIndex


@dataclass
class IndexEvaluation:
    k: int
    n_queries: int
    #: leave-one-out precision@k: the share of the k nearest other clips that share a label with the query
    precision_at_k: float | None
    #: leave-one-out mean average precision at k (normalised by min(k, number of relevant clips))
    map_at_k: float | None
    #: precision@k of a random ranking (the share of other clips sharing a label, averaged over queries)
    chance_precision: float | None
    #: for approximate indexes: |approximate top-k & exact top-k| / k, averaged over queries
    recall_at_k: float | None = None
    kind: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_index(index: SimilarityIndex, labels: dict[str, list[str] | None] | str | os.PathLike | None = None,
                   *, k: int = 5, store=None, max_queries: int | None = 2000, seed: int = 0) -> IndexEvaluation:
    """Leave-one-out retrieval quality: every labelled clip (or ``max_queries`` of them, at random) queries the
    index for its ``k`` nearest other clips.

    labels: ``{clip_id: [labels]}``, a ``fname,labels`` CSV, or None for the labels kept in the index.
    store: the store the index was built from, for recall@k against exact search of approximate indexes
    (default: the manifest's store path, when it still exists). Exact search uses the same preprocessing and
    metric on the store's original vectors."""
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ParamError(f"k must be a positive integer, got {k!r}")
    if labels is None:
        by_id = dict(zip(index.clip_ids, index.labels))
    elif isinstance(labels, dict):
        by_id = labels
    else:
        from embedtag.inputs import read_labels_csv

        by_id = read_labels_csv(labels).labels_by_id()
    all_labels = [by_id.get(c) for c in index.clip_ids]
    labelled = [i for i, v in enumerate(all_labels) if v]
    rng = np.random.default_rng(seed)
    note = []
    if not labelled:
        note.append("no labelled clips: precision/mAP not computed")
    # queries: labelled clips if any, else random clips (recall only)
    pool = labelled if labelled else list(range(len(index)))
    if max_queries is not None and len(pool) > max_queries:
        pool = sorted(rng.choice(pool, max_queries, replace=False).tolist())
    if not pool:
        raise DataError("the index is empty; nothing to evaluate")
    kk = min(k, len(index) - 1)
    if kk < 1:
        raise DataError("leave-one-out evaluation needs at least 2 indexed clips")
    exact_x = None
    if index.manifest.kind in ("ivfpq", "hnsw"):
        from embedtag.store import open_store

        if store is None and index.manifest.store_path and Path(index.manifest.store_path).is_dir():
            store = open_store(index.manifest.store_path)
        if store is None:
            note.append("recall@k not computed: the store the index was built from is not available")
        else:
            if isinstance(store, (str, os.PathLike)):
                store = open_store(store)
            index.check_store(store)
            exact_x = index_space_from_store(index, store)
    # queries: the clips' exact vectors when known, else what the index keeps of them
    q = exact_x[pool] if exact_x is not None else index.stored_vectors(pool)
    _, rows = index._search_prepared(q, kk, pool)

    prec = mapk = chance = None
    if labelled:
        # relevant = shares a label; count per distinct label set (few of them) instead of per clip pair
        set_counts = Counter(frozenset(all_labels[j]) for j in labelled)
        n_rel = [sum(c for ls, c in set_counts.items() if ls & set(all_labels[i])) - 1 for i in pool]
        neigh = [[all_labels[j] if j >= 0 else None for j in r] for r in rows]
        prec, mapk = retrieval_metrics(neigh, [all_labels[i] for i in pool], n_rel, kk)
        chance = float(np.mean([n / (len(index) - 1) for n in n_rel]))

    recall = None
    if exact_x is not None:
        recall = recall_vs_exact(exact_x, index.manifest.metric, pool, rows, kk)
    return IndexEvaluation(k=kk, n_queries=len(pool), precision_at_k=prec, map_at_k=mapk, chance_precision=chance,
                           recall_at_k=recall, kind=index.manifest.kind, note="; ".join(note))


def index_space_from_store(index: SimilarityIndex, store) -> np.ndarray:
    """The store's exact vectors in index space, in index row order."""
    pos = {c: i for i, c in enumerate(store.clip_ids)}
    missing = [c for c in index.clip_ids if c not in pos]
    if missing:
        raise IncompatibleError(f"store {store.path} lacks {len(missing)} indexed clips (e.g. {missing[0]!r}); "
                                f"cannot compute exact neighbours")
    return index.transform(store.embeddings()[[pos[c] for c in index.clip_ids]])


def exact_search(x: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force (scores, rows) of index-space ``queries`` among index-space ``x`` (FAISS flat index)."""
    import faiss

    flat = faiss.IndexFlatIP(x.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(x.shape[1])
    flat.add(np.ascontiguousarray(x, np.float32))
    return flat.search(np.ascontiguousarray(queries, np.float32), k)


def recall_vs_exact(x: np.ndarray, metric: str, pool: list[int], approx_rows: np.ndarray, k: int) -> float:
    """Leave-one-out recall@k of ``approx_rows`` (the approximate neighbours of rows ``pool`` of ``x``, the query
    itself left out) against exact search."""
    _, exact = exact_search(x, x[pool], k + 1, metric)
    hits = 0
    for i, q in enumerate(pool):
        ex = [j for j in exact[i] if j != q][:k]
        hits += len(set(ex) & set(approx_rows[i][approx_rows[i] >= 0].tolist()))
    return hits / (k * len(pool))
