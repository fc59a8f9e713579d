"""Which FAISS index to build and how: the ``auto`` policy, default parameters, the ivfpq projection.

Index kinds: ``flat`` is exact brute force; ``hnsw`` is a graph over uncompressed vectors (fast, approximate,
no smaller than flat); ``ivfpq`` projects wide embeddings onto their top principal directions, then keeps an
inverted file over 4-bit product-quantisation codes (FAISS fast-scan) whose shortlist is re-ranked on randomly
rotated 8-bit scalar-quantised vectors: at 1M x 1024 on 2 CPU cores about a fifth of the flat size, recall@10
~0.96 against exact search and ~2 ms per query (benchmarks/search_speed.py). ``auto`` picks ``flat`` up to
``AUTO_FLAT_MAX_CLIPS`` clips and ``ivfpq`` above.
"""

from __future__ import annotations

import math

import numpy as np

from embedtag.errors import ParamError
from embedtag.search.preprocess import check_choice

KINDS = ("auto", "flat", "hnsw", "ivfpq")
#: ``kind="auto"`` uses exact search up to this many clips (at 1024 dims: 200 MB, one 0.1 GFLOP pass per query)
AUTO_FLAT_MAX_CLIPS = 50_000
#: the fewest clips an ``ivfpq`` index can be trained on (k-means and the PQ codebooks need data)
IVFPQ_MIN_CLIPS = 10_000
#: at most this many clips are used to fit preprocessing and train an approximate index (k-means cost)
MAX_TRAIN_CLIPS = 100_000
#: an ivfpq index over embeddings at least this wide keeps only their top principal directions (projection_dim):
#: as many as fit this share of the flat index's size, and no more than carry PROJECT_KEEP_ENERGY of the energy
PROJECT_MIN_DIM = 256
PROJECT_SIZE_BUDGET = 0.22
PROJECT_KEEP_ENERGY = 1 - 1e-6


def _pow2_near(x: float) -> int:
    return int(2 ** round(math.log2(max(x, 1.0))))


def choose_index(n_clips: int, dim: int, kind: str = "auto", **overrides) -> tuple[str, dict]:
    """The concrete kind and its parameters for ``n_clips`` vectors of ``dim`` dims (after preprocessing).

    ``overrides`` replace the defaults: ``hnsw_m``, ``ef_construction``, ``ef_search`` (hnsw); ``nlist``,
    ``pq_m``, ``opq``, ``nprobe``, ``k_factor``, ``refine`` (a FAISS scalar quantiser: SQ8, SQ6, SQfp16...),
    ``refine_rotation``, ``project_dim`` (ivfpq; None: chosen from the training vectors by
    :func:`projection_dim`, i.e. the principal directions that fit ``PROJECT_SIZE_BUDGET`` and carry the energy;
    0: no projection)."""
    check_choice("kind", kind, KINDS)
    if kind == "auto":
        kind = "flat" if n_clips <= AUTO_FLAT_MAX_CLIPS else "ivfpq"
    if kind == "flat":
        params: dict = {}
    elif kind == "hnsw":
        params = {"hnsw_m": 32, "ef_construction": 80, "ef_search": 128}
    else:
        # ~4 sqrt(N) lists keeps both the coarse step and the list scans small; capped so k-means on at most
        # MAX_TRAIN_CLIPS vectors has >= ~40 points per centroid.
        cap = min(2048, min(n_clips, MAX_TRAIN_CLIPS) // 40)
        nlist = int(max(min(_pow2_near(4 * math.sqrt(max(n_clips, 1))), 2 ** int(math.log2(max(cap, 1)))), 16))
        # 4-bit fast-scan PQ codes (dim/8 sub-quantisers) only shortlist k_factor * k candidates, cheaply (SIMD);
        # the final order comes from 8-bit scalar-quantised copies (1 byte per dim). Before SQ8 the vectors are
        # randomly rotated, which spreads the sparse, heavy-tailed post-ReLU coordinates evenly over the
        # per-dimension ranges SQ8 learns (exhaustive SQ8 recall@10 at 100k clustered clips: 0.97 -> 0.99); wide
        # embeddings are also projected onto their top principal directions (project_dim, chosen at training:
        # 768 of 1024 dims keeps the index at ~21% of the flat size for -0.006 recall). SQ6 falls to ~0.89; fp16
        # is ~0.997 at twice the size. At 1M clips the shortlist needs k_factor 512 to reach recall ~0.96 (p50
        # ~2.3 ms on 2 cores). OPQ did not help on YAMNet-like data and costs minutes of training: off by default.
        params = {"nlist": nlist, "pq_m": _default_pq_m(dim), "opq": False, "nprobe": 32,
                  "k_factor": 512 if n_clips > 300_000 else 256,
                  "refine": "SQ8", "refine_rotation": True, "project_dim": None}
    unknown = set(overrides) - set(params)
    if unknown:
        raise ParamError(f"unknown parameters for kind={kind!r}: {sorted(unknown)} (known: {sorted(params)})")
    params.update({k: v for k, v in overrides.items() if v is not None})
    return kind, params


def _default_pq_m(dim: int) -> int:
    pq_m = max(8, dim // 8)
    return pq_m - pq_m % 2  # fast-scan packs codes in pairs


def principal_directions(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns, same order) of the uncentred second moment ``x.T @ x``:
    the directions and energy that inner products between rows of ``x`` live in."""
    x = np.asarray(x, np.float64)
    evals, evecs = np.linalg.eigh(x.T @ x)
    return np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]


def projection_dim(eigenvalues: np.ndarray, pq_m: int, size_budget: float = PROJECT_SIZE_BUDGET,
                   keep_energy: float = PROJECT_KEEP_ENERGY) -> int:
    """How many principal directions (``eigenvalues``: descending, from :func:`principal_directions` of the
    index-space training vectors) an ivfpq index keeps: the most that fit ``size_budget`` x the flat size (8-bit
    re-ranking codes, ``pq_m`` 4-bit shortlist codes and an 8-byte id per vector), and no more than carry
    ``keep_energy`` of the energy; a multiple of ``pq_m``. 0: no projection (narrow embeddings, or nothing to gain).

    Audio embeddings use far fewer directions than their width (640 of YAMNet's 1024 carry all but 1e-6 of the
    energy of the real clips here), so dropping the rest costs little recall and a quarter of the bytes."""
    ev = np.asarray(eigenvalues, np.float64)
    dim = len(ev)
    if dim < PROJECT_MIN_DIM:
        return 0
    fits = int((size_budget * 4 * dim - pq_m / 2 - 8) // pq_m) * pq_m
    if ev.sum() > 0:
        tail = 1.0 - np.cumsum(ev) / ev.sum()
        needed = int(np.argmax(tail <= 1.0 - keep_energy)) + 1 if (tail <= 1.0 - keep_energy).any() else dim
        fits = min(fits, -(-needed // pq_m) * pq_m)
    return fits if 0 < fits < dim else 0


def projection_matrix(eigenvectors: np.ndarray, d: int, seed: int) -> np.ndarray:
    """(dim, d): the top-``d`` principal directions (uncentred, so inner products are kept) followed by a random
    rotation that spreads the energy evenly over the ``d`` coordinates, as product and scalar quantisers want (the
    role ``RR`` plays without a projection)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return np.ascontiguousarray(eigenvectors[:, :d] @ (q * np.sign(np.diag(r))), np.float32)


def factory_string(kind: str, dim: int, params: dict) -> str:
    """The FAISS factory string; a projection shows as a ``Proj{d}`` prefix (a LinearTransform, not factory syntax)."""
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{int(params['hnsw_m'])},Flat"
    proj = int(params.get("project_dim") or 0)
    return (f"Proj{proj}," if proj else "") + _ivfpq_factory(proj or dim, params, rotate=not proj)


def _ivfpq_factory(dim: int, params: dict, rotate: bool) -> str:
    pq_m = int(params["pq_m"])
    opq = f"OPQ{pq_m}," if params.get("opq") else ""
    rot = f"RR{dim}," if params.get("refine_rotation") and rotate else ""
    return f"{opq}IVF{int(params['nlist'])},PQ{pq_m}x4fs,Refine({rot}{params['refine']})"


def new_faiss_index(kind: str, dim: int, params: dict, metric: str, projection: np.ndarray | None):
    """An untrained FAISS index of ``kind`` over ``dim``-d index-space vectors (``projection``: (dim, d) or None)."""
    import faiss

    if projection is None:
        return faiss.index_factory(dim, factory_string(kind, dim, params), faiss_metric(metric))
    d = projection.shape[1]
    lt = faiss.LinearTransform(dim, d, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(projection.T).ravel(), lt.A)  # A is (d, dim), row-major
    lt.set_is_orthonormal()  # lets reconstruct() map codes back to index space
    lt.is_trained = True
    inner = faiss.index_factory(d, _ivfpq_factory(d, params, rotate=False), faiss_metric(metric))
    index = faiss.IndexPreTransform(lt, inner)
    index.own_fields = True
    lt.this.disown()  # the PreTransform owns both now
    inner.this.disown()
    return index


def refine_index(index):
    """The IndexRefine of an ivfpq index (inside the projection, if there is one)."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def faiss_metric(metric: str):
    import faiss

    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def apply_search_params(index, kind: str, params: dict) -> None:
    """Set the query-time parameters (``ef_search``; ``nprobe``, ``k_factor``) on a FAISS index."""
    import faiss

    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(params["ef_search"])
    elif kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
        refine_index(index).k_factor = float(params["k_factor"])


def min_bytes_per_vector(kind: str, dim: int, params: dict) -> float:
    """A lower bound on the bytes each indexed vector takes in ``index.faiss``: what a file must at least hold
    for the number of vectors its header claims (flat/hnsw: the float32 vectors; ivfpq: its 4-bit PQ codes)."""
    if kind in ("flat", "hnsw"):
        return 4.0 * dim
    try:
        return max(1.0, int(params.get("pq_m", 8)) / 2)
    except (TypeError, ValueError):
        return 1.0
