"""Similar-sound search: a FAISS index over an embedding store.

>>> from embedtag.store import open_store
>>> from embedtag.search import build_index, SimilarityIndex
>>> index = build_index(open_store("office.store"), metric="cosine", preprocess="center")
>>> index.save("office.index")
>>> SimilarityIndex.load("office.index").query("cough_01.wav", k=5)   # a file, a directory or a stored clip id

How vectors are compared: each embedding goes through the index's preprocessing (``none``; ``center``: subtract
the store mean; ``whiten``: PCA whitening fitted on the store), then for ``metric="cosine"`` is L2-normalised and
compared by inner product (score = cosine similarity, higher is closer); for ``metric="l2"`` the score is the
Euclidean distance (lower is closer). Centring matters for post-ReLU embeddings (PANNs, YAMNet): every coordinate
is non-negative, so raw cosines are all positive and crowd together; subtracting the mean spreads them out.

Index kinds: ``flat`` is exact brute force; ``hnsw`` is a graph over uncompressed vectors (fast, approximate,
no smaller than flat); ``ivfpq`` projects wide embeddings onto their top principal directions, then keeps an
inverted file over 4-bit product-quantisation codes (FAISS fast-scan) whose shortlist is re-ranked on randomly
rotated 8-bit scalar-quantised vectors: at 1M x 1024 on 2 CPU cores about a fifth of the flat size, recall@10
~0.96 against exact search and ~2 ms per query (benchmarks/search_speed.py). ``auto`` picks ``flat`` up to ``AUTO_FLAT_MAX_CLIPS`` clips
and ``ivfpq`` above. The parameters chosen are recorded in the manifest.

Index directory::

    INDEX/
      manifest.json          backbone, dim, store configuration and fingerprint, metric, preprocessing, kind, params
      index.faiss            faiss.write_index of the FAISS index; row i of the index is row i of ids.parquet
      ids.parquet            clip_id, path, labels of each indexed clip
      preprocess.safetensors mean / whitening matrix (absent for preprocess="none")

Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from embedtag.errors import DataError, IncompatibleError, StoreError

FORMAT_VERSION = 1
KINDS = ("auto", "flat", "hnsw", "ivfpq")
METRICS = ("cosine", "l2")
PREPROCESSING = ("none", "center", "whiten")
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
_ADD_CHUNK = 65_536

MANIFEST_NAME = "manifest.json"
FAISS_NAME = "index.faiss"
IDS_NAME = "ids.parquet"
PREPROCESS_NAME = "preprocess.safetensors"


# ---------------------------------------------------------------------------------------------- preprocessing
@dataclass
class Preprocessor:
    """Centring / PCA whitening fitted on the store; ``transform`` maps raw embeddings to index space.

    ``whiten``: ``x -> (x - mean) @ V_k / sqrt(lambda_k + eps * lambda_1)`` with the top ``n_components``
    eigenpairs of the store covariance. ``eps`` (relative to the largest eigenvalue) keeps the many near-zero
    directions of a small store from being blown up into noise.
    """

    kind: str = "none"
    dim: int = 0
    mean: np.ndarray | None = None
    #: (dim, n_components) whitening matrix, for kind="whiten"
    matrix: np.ndarray | None = None
    n_components: int | None = None
    eps: float = 0.0
    n_fit: int = 0

    @classmethod
    def fit(cls, x: np.ndarray, kind: str = "none", *, n_components: int | None = None,
            eps: float = 0.1) -> Preprocessor:
        _check_choice("preprocess", kind, PREPROCESSING)
        x = np.asarray(x, np.float32)
        n, dim = x.shape
        if kind == "none":
            return cls("none", dim)
        if n < 2:
            raise DataError(f"preprocess={kind!r} needs at least 2 clips to fit, got {n}")
        mean = x.astype(np.float64).mean(axis=0)
        if kind == "center":
            return cls("center", dim, mean.astype(np.float32), n_fit=n)
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        max_k = min(dim, n - 1)
        k = max_k if n_components is None else int(n_components)
        if not 1 <= k <= max_k:
            raise ValueError(f"n_components must be in [1, {max_k}] (min(dim, n_clips - 1)), got {n_components}")
        xc = x.astype(np.float64) - mean
        cov = xc.T @ xc / (n - 1)
        evals, evecs = np.linalg.eigh(cov)  # ascending
        order = np.argsort(evals)[::-1][:k]
        evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
        scale = 1.0 / np.sqrt(evals + eps * evals[0] + 1e-12)
        matrix = np.ascontiguousarray(evecs * scale, np.float32)
        return cls("whiten", dim, mean.astype(np.float32), matrix, k, float(eps), n)

    @property
    def out_dim(self) -> int:
        return self.matrix.shape[1] if self.matrix is not None else self.dim

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.kind == "none":
            return np.ascontiguousarray(x)
        x = x - self.mean
        if self.kind == "whiten":
            x = x @ self.matrix
        return np.ascontiguousarray(x, np.float32)

    def params(self) -> dict:
        return {"kind": self.kind, "n_components": self.n_components, "eps": self.eps, "n_fit": self.n_fit}

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        # safetensors writes the raw buffer: a strided view (eigenvector columns) must be made contiguous first
        tensors = {k: np.ascontiguousarray(v) for k, v in (("mean", self.mean), ("matrix", self.matrix))
                   if v is not None}
        if tensors:
            save_file(tensors, str(path))

    @classmethod
    def load(cls, path: Path, params: dict, dim: int) -> Preprocessor:
        kind = params.get("kind", "none")
        tensors: dict = {}
        if kind != "none":
            if not path.is_file():
                raise StoreError(f"{path} is missing (preprocess={kind!r})")
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
        return cls(kind, dim, tensors.get("mean"), tensors.get("matrix"), params.get("n_components"),
                   float(params.get("eps", 0.0)), int(params.get("n_fit", 0)))


# ---------------------------------------------------------------------------------------------- FAISS factory
def _pow2_near(x: float) -> int:
    return int(2 ** round(math.log2(max(x, 1.0))))


def choose_index(n_clips: int, dim: int, kind: str = "auto", **overrides) -> tuple[str, dict]:
    """The concrete kind and its parameters for ``n_clips`` vectors of ``dim`` dims (after preprocessing).

    ``overrides`` replace the defaults: ``hnsw_m``, ``ef_construction``, ``ef_search`` (hnsw); ``nlist``,
    ``pq_m``, ``opq``, ``nprobe``, ``k_factor``, ``refine`` (a FAISS scalar quantiser: SQ8, SQ6, SQfp16...),
    ``refine_rotation``, ``project_dim`` (ivfpq; None: chosen from the training vectors by
    :func:`projection_dim`, i.e. the principal directions that fit ``PROJECT_SIZE_BUDGET`` and carry the energy;
    0: no projection)."""
    _check_choice("kind", kind, KINDS)
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
        raise ValueError(f"unknown parameters for kind={kind!r}: {sorted(unknown)} (known: {sorted(params)})")
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


def _projection_matrix(eigenvectors: np.ndarray, d: int, seed: int) -> np.ndarray:
    """(dim, d): the top-``d`` principal directions (uncentred, so inner products are kept) followed by a random
    rotation that spreads the energy evenly over the ``d`` coordinates, as product and scalar quantisers want (the
    role ``RR`` plays without a projection)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return np.ascontiguousarray(eigenvectors[:, :d] @ (q * np.sign(np.diag(r))), np.float32)


def _factory_string(kind: str, dim: int, params: dict) -> str:
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


def _new_faiss_index(kind: str, dim: int, params: dict, metric: str, projection: np.ndarray | None):
    import faiss

    if projection is None:
        return faiss.index_factory(dim, _factory_string(kind, dim, params), _faiss_metric(metric))
    d = projection.shape[1]
    lt = faiss.LinearTransform(dim, d, False)
    faiss.copy_array_to_vector(np.ascontiguousarray(projection.T).ravel(), lt.A)  # A is (d, dim), row-major
    lt.set_is_orthonormal()  # lets reconstruct() map codes back to index space
    lt.is_trained = True
    inner = faiss.index_factory(d, _ivfpq_factory(d, params, rotate=False), _faiss_metric(metric))
    index = faiss.IndexPreTransform(lt, inner)
    index.own_fields = True
    lt.this.disown()  # the PreTransform owns both now
    inner.this.disown()
    return index


def _refine_index(index):
    """The IndexRefine of an ivfpq index (inside the projection, if there is one)."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def _faiss_metric(metric: str):
    import faiss

    return faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2


def _apply_search_params(index, kind: str, params: dict) -> None:
    import faiss

    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(params["ef_search"])
    elif kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
        _refine_index(index).k_factor = float(params["k_factor"])


# ---------------------------------------------------------------------------------------------- the index
@dataclass
class IndexManifest:
    backbone: str
    embedding_dim: int
    #: the store configuration queries must match (pooling, window_s, sample_rate, weights_sha256)
    store_key: dict
    metric: str
    preprocess: dict
    kind: str
    factory: str
    params: dict
    n_clips: int = 0
    store_fingerprint: str = ""
    store_path: str = ""
    build_time_s: float = 0.0
    embedtag_version: str = ""
    format_version: int = FORMAT_VERSION
    created_at: str = ""
    extra: dict = field(default_factory=dict)
    #: tells an index manifest from a store's (both are manifest.json)
    artifact: str = "embedtag-similarity-index"


def _artifact(manifest_path: Path) -> str | None:
    """The ``artifact`` a manifest.json declares (None for a store's); StoreError naming the file when corrupt."""
    try:
        return json.loads(manifest_path.read_text()).get("artifact")
    except (ValueError, AttributeError) as exc:
        raise StoreError(f"{manifest_path} is corrupt: {exc}") from None


def _is_index_dir(d: Path) -> bool:
    try:
        return _artifact(d / MANIFEST_NAME) == IndexManifest.artifact
    except (OSError, StoreError):
        return False


class SimilarityIndex:
    """A FAISS index plus the id mapping and what is needed to embed and preprocess queries.

    Make one with :func:`build_index` or :meth:`SimilarityIndex.load`; row ``i`` of the FAISS index is clip
    ``clip_ids[i]``."""

    def __init__(self, faiss_index, manifest: IndexManifest, preprocessor: Preprocessor,
                 clip_ids: list[str] | None = None, paths: list[str] | None = None,
                 labels: list[list[str] | None] | None = None):
        self.faiss_index = faiss_index
        self.manifest = manifest
        self.preprocessor = preprocessor
        self.clip_ids: list[str] = list(clip_ids or [])
        self.paths: list[str] = list(paths or [])
        self.labels: list[list[str] | None] = list(labels or [])
        self._row = {c: i for i, c in enumerate(self.clip_ids)}
        self._backbone = None  # loaded on the first audio-file query

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, train_vectors: np.ndarray, *, backbone: str, store_key: dict | None = None,
               n_clips: int | None = None, kind: str = "auto", metric: str = "cosine", preprocess: str = "none",
               whiten_components: int | None = None, whiten_eps: float = 0.1, seed: int = 0,
               **index_params) -> SimilarityIndex:
        """An empty index whose preprocessing and quantisers are fitted on ``train_vectors`` (raw embeddings; a
        random ``MAX_TRAIN_CLIPS`` of them when there are more).

        ``n_clips`` (default: ``len(train_vectors)``) is the expected size, which ``kind="auto"`` and the
        default parameters are chosen for. Add vectors with :meth:`add`."""
        import faiss

        _check_choice("metric", metric, METRICS)
        train = np.asarray(train_vectors, np.float32)
        if train.ndim != 2 or len(train) == 0:
            raise DataError(f"need a non-empty (n, dim) matrix of embeddings to build an index, got {train.shape}")
        if not np.isfinite(train).all():
            raise DataError("embeddings contain NaN or inf; re-extract the store")
        # preprocessing and quantisers are fitted on at most MAX_TRAIN_CLIPS rows (memory, k-means time)
        sample = train
        if len(sample) > MAX_TRAIN_CLIPS:
            rng = np.random.default_rng(seed)
            sample = sample[np.sort(rng.choice(len(sample), MAX_TRAIN_CLIPS, replace=False))]
        pre = Preprocessor.fit(sample, preprocess, n_components=whiten_components, eps=whiten_eps)
        n_clips = len(train) if n_clips is None else int(n_clips)
        kind, params = choose_index(n_clips, pre.out_dim, kind, **index_params)
        if kind == "ivfpq" and len(train) < IVFPQ_MIN_CLIPS:
            raise DataError(f"kind='ivfpq' needs at least {IVFPQ_MIN_CLIPS} clips to train its quantisers, "
                            f"got {len(train)}; use kind='flat' (exact) or 'auto'")
        # index-space training vectors, once: for the projection and the quantisers (flat and hnsw need none)
        xs = _finish(pre.transform(sample), metric) if kind == "ivfpq" else None
        projection = None
        if kind == "ivfpq":
            if params["project_dim"] != 0:
                evals, evecs = principal_directions(xs)
                if params["project_dim"] is None:
                    params["project_dim"] = projection_dim(evals, int(params["pq_m"]))
            d = int(params["project_dim"])
            if not 0 <= d <= pre.out_dim or (d and d % int(params["pq_m"])):
                raise ValueError(f"project_dim must be 0 (off) or a multiple of pq_m={params['pq_m']} up to "
                                 f"{pre.out_dim}, got {d}")
            if d:
                projection = _projection_matrix(evecs, d, seed)
        factory = _factory_string(kind, pre.out_dim, params)
        index = _new_faiss_index(kind, pre.out_dim, params, metric, projection)
        if kind == "hnsw":
            faiss.downcast_index(index).hnsw.efConstruction = int(params["ef_construction"])
        if not index.is_trained:
            if kind == "ivfpq":
                faiss.extract_index_ivf(index).cp.seed = seed
            index.train(xs if xs is not None else _finish(pre.transform(sample), metric))
        del xs
        _apply_search_params(index, kind, params)
        from embedtag import __version__

        manifest = IndexManifest(
            backbone=backbone, embedding_dim=int(train.shape[1]), store_key=dict(store_key or {}), metric=metric,
            preprocess=pre.params(), kind=kind, factory=factory, params=params,
            embedtag_version=__version__, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return cls(index, manifest, pre)

    def add(self, vectors: np.ndarray, clip_ids: Sequence[str], paths: Sequence[str] | None = None,
            labels: Sequence[list[str] | None] | None = None, *, progress: bool = False) -> int:
        """Append raw embeddings with their ids; clip ids already indexed are skipped. Returns how many were added."""
        vectors = self._check_vectors(vectors, "vectors to add")
        clip_ids = [str(c) for c in clip_ids]
        if len(clip_ids) != len(vectors):
            raise DataError(f"{len(vectors)} vectors but {len(clip_ids)} clip ids")
        paths = [""] * len(clip_ids) if paths is None else [str(p) for p in paths]
        labels = [None] * len(clip_ids) if labels is None else [None if v is None else list(v) for v in labels]
        seen = set(self._row)
        keep = []
        for i, c in enumerate(clip_ids):
            if c not in seen:
                seen.add(c)
                keep.append(i)
        if not keep:
            return 0
        if len(keep) < len(clip_ids):
            vectors = vectors[keep]
        with _progress(progress, len(keep), "indexing") as advance:
            for start in range(0, len(keep), _ADD_CHUNK):
                chunk = vectors[start:start + _ADD_CHUNK]
                self.faiss_index.add(_finish(self.preprocessor.transform(chunk), self.manifest.metric))
                advance(len(chunk))
        for i in keep:
            self._row[clip_ids[i]] = len(self.clip_ids)
            self.clip_ids.append(clip_ids[i])
            self.paths.append(paths[i])
            self.labels.append(labels[i])
        self.manifest.n_clips = len(self.clip_ids)
        return len(keep)

    def add_from_store(self, store, *, progress: bool = False) -> int:
        """Add the clips of ``store`` that are not indexed yet (by clip id), without retraining or rebuilding.

        Preprocessing and quantisers stay as fitted at build time. Returns the number of clips added."""
        self.check_store(store)
        ids = store.clip_ids
        new = [i for i, c in enumerate(ids) if c not in self._row]
        if new:
            table = store.table(["clip_id", "path", "labels"])
            emb = store.embeddings()[new]
            paths = table.column("path").to_pylist()
            labels = table.column("labels").to_pylist()
            self.add(emb, [ids[i] for i in new], [paths[i] for i in new], [labels[i] for i in new],
                     progress=progress)
        self.manifest.store_fingerprint = store.fingerprint()
        return len(new)

    # ------------------------------------------------------------------ compatibility
    def check_store(self, store) -> None:
        """IncompatibleError unless ``store`` was embedded the way this index's clips were."""
        m = store.manifest
        mine = {"backbone": self.manifest.backbone, "embedding_dim": self.manifest.embedding_dim,
                **self.manifest.store_key}
        theirs = {"backbone": m.backbone, "embedding_dim": m.embedding_dim, **m.key()}
        diff = [f"{k}: index has {mine[k]!r}, store has {theirs.get(k)!r}" for k in mine
                if k in theirs and mine[k] != theirs[k]]
        if diff:
            raise IncompatibleError(f"store {store.path} does not match this index ({'; '.join(diff)}); "
                                    f"build a new index from it")

    def _check_vectors(self, vectors, what: str) -> np.ndarray:
        v = np.asarray(vectors, np.float32)
        if v.ndim == 1:
            v = v[None, :]
        dim = self.manifest.embedding_dim
        if v.ndim != 2 or v.shape[1] != dim:
            raise IncompatibleError(f"{what} have dimension {v.shape[-1] if v.ndim else '?'}, but this index holds "
                                    f"{dim}-d {self.manifest.backbone} embeddings")
        if not np.isfinite(v).all():
            raise DataError(f"{what} contain NaN or inf")
        return v

    # ------------------------------------------------------------------ search
    def __len__(self) -> int:
        return len(self.clip_ids)

    def search(self, vectors: np.ndarray, k: int = 10, *, exclude_rows: Sequence[int] | None = None
               ) -> list[list[dict]]:
        """Nearest indexed clips of each raw embedding (rows of ``vectors``): per query, a list of dicts with
        ``rank`` (1-based), ``score``, ``clip_id``, ``path``, ``labels``. ``exclude_rows[i]`` (an index row, or -1)
        is left out of query ``i``'s results."""
        return self._rows_to_dicts(*self.search_rows(vectors, k, exclude_rows=exclude_rows))

    def search_rows(self, vectors: np.ndarray, k: int = 10, *, exclude_rows: Sequence[int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n_queries, k) for raw embeddings; rows are index rows (-1 where fewer than k
        clips qualify)."""
        v = self._check_vectors(vectors, "query embeddings")
        return self._search_prepared(_finish(self.preprocessor.transform(v), self.manifest.metric), k, exclude_rows)

    def _search_prepared(self, q: np.ndarray, k: int, exclude_rows: Sequence[int] | None
                         ) -> tuple[np.ndarray, np.ndarray]:
        if not (isinstance(k, (int, np.integer)) and k >= 1):
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if len(self) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        extra = 0 if exclude_rows is None else 1
        dist, rows = self.faiss_index.search(np.ascontiguousarray(q, np.float32), min(k + extra, len(self)))
        if exclude_rows is not None:
            out_d = np.full((len(q), k), np.nan, np.float32)
            out_r = np.full((len(q), k), -1, np.int64)
            for i, ex in enumerate(exclude_rows):
                keep = rows[i] != ex
                if keep.all():  # the clip itself was not retrieved (approximate index): drop the last one
                    keep[-1] = False
                d, r = dist[i][keep][:k], rows[i][keep][:k]
                out_d[i, :len(d)], out_r[i, :len(r)] = d, r
            dist, rows = out_d, out_r
        else:
            dist, rows = dist[:, :k], rows[:, :k]
        if self.manifest.metric == "l2":  # FAISS returns squared distances
            dist = np.sqrt(np.maximum(dist, 0.0))
        return dist, rows

    def _rows_to_dicts(self, scores: np.ndarray, rows: np.ndarray) -> list[list[dict]]:
        return [[{"rank": r + 1, "score": float(s), "clip_id": self.clip_ids[j], "path": self.paths[j],
                  "labels": self.labels[j]} for r, (s, j) in enumerate(zip(srow, jrow)) if j >= 0]
                for srow, jrow in zip(scores, rows)]

    def search_ids(self, clip_ids: Sequence[str], k: int = 10) -> list[list[dict]]:
        """Neighbours of indexed clips, each query clip itself left out of its own results."""
        missing = [c for c in clip_ids if c not in self._row]
        if missing:
            raise DataError(f"{missing[0]}: not a clip id in this index")
        rows = [self._row[c] for c in clip_ids]
        return self._rows_to_dicts(*self._search_prepared(self._stored_vectors(rows), k, rows))

    def query(self, queries, k: int = 10, *, batch_size: int | None = None, device: str = "auto",
              weights: str | os.PathLike | None = None, progress: bool = False) -> list[list[dict]]:
        """Neighbours of each query, as in :meth:`search`. A query is the id of a stored clip, an audio file
        (embedded on the fly with the index's backbone, pooling and window), or a directory (each audio file in
        it, recursively, in sorted order, is one query). Ids are tried first.

        For a stored-id query the clip itself is skipped (it would always be rank 1); a file query skips nothing,
        so a file that is itself indexed comes back first with score ~1. Use :meth:`expand_queries` for the
        names of the queries in the order of the results."""
        resolved = self._resolve(queries)
        results: list[list[dict] | None] = [None] * len(resolved)
        by_id = [(i, self._row[x]) for i, (t, x) in enumerate(resolved) if t == "id"]
        files = [(i, x) for i, (t, x) in enumerate(resolved) if t == "file"]
        if by_id:
            for (i, _), res in zip(by_id, self.search_ids([resolved[i][1] for i, _ in by_id], k)):
                results[i] = res
        if files:
            vecs = self.embed_files([x for _, x in files], batch_size=batch_size, device=device, weights=weights,
                                    progress=progress)
            for (i, _), res in zip(files, self.search(vecs, k)):
                results[i] = res
        return results  # type: ignore[return-value]

    def expand_queries(self, queries) -> list[str]:
        """The names of the queries :meth:`query` answers, in order (directories expanded to their files)."""
        return [x for _, x in self._resolve(queries)]

    def _resolve(self, queries) -> list[tuple[str, str]]:
        if isinstance(queries, (str, os.PathLike)):
            queries = [queries]
        from embedtag.embeddings.audio import is_audio_path

        out: list[tuple[str, str]] = []
        for q in queries:
            s = str(q)
            if s in self._row:
                out.append(("id", s))
                continue
            p = Path(s)
            if p.is_dir():
                found = sorted(str(f) for f in p.rglob("*") if f.is_file() and is_audio_path(f))
                if not found:
                    raise DataError(f"{p}: directory holds no audio files")
                out.extend(("file", f) for f in found)
            elif p.is_file():
                out.append(("file", s))
            else:
                raise DataError(f"{s}: neither a clip id in this index nor an existing audio file or directory")
        return out

    def embed_files(self, files: Sequence[str], *, batch_size: int | None = None, device: str = "auto",
                    weights: str | os.PathLike | None = None, progress: bool = False) -> np.ndarray:
        """Embed audio files exactly as the indexed store was embedded (same backbone, weights, pooling, window).

        The backbone is loaded once and kept on the index for later queries."""
        from embedtag.embeddings.pipeline import encode
        from embedtag.embeddings.registry import load_backbone

        key = self.manifest.store_key
        if getattr(self, "_backbone", None) is None or weights is not None:
            backbone = load_backbone(self.manifest.backbone, weights=weights, device=device)
            want = key.get("weights_sha256")
            if want and backbone.weights_sha256 and backbone.weights_sha256 != want:
                raise IncompatibleError(f"the {self.manifest.backbone} weights found ({backbone.weights_path}) are "
                                        f"not those the index was built with (sha256 {want[:12]}...); pass the "
                                        f"original weights")
            self._backbone = backbone
        kwargs = {}
        if key.get("pooling"):
            kwargs["pooling"] = key["pooling"]
        if key.get("window_s") is not None:
            kwargs["window_s"] = key["window_s"]
        emb = np.asarray(encode(list(files), model=self._backbone, batch_size=batch_size, progress=progress,
                                **kwargs), np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.manifest.embedding_dim:
            raise IncompatibleError(f"backbone {self.manifest.backbone} gave {emb.shape[-1]}-d embeddings, "
                                    f"the index holds {self.manifest.embedding_dim}-d ones")
        return emb

    def _stored_vectors(self, rows: Sequence[int]) -> np.ndarray:
        """Index-space vectors of indexed rows (exact for flat/HNSW; the 8-bit re-ranking copies for ivfpq, close
        enough to serve as a query)."""
        return np.vstack([self.faiss_index.reconstruct(int(r)) for r in rows]).astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index directory (FAISS file, ids.parquet, preprocess.safetensors, manifest.json)."""
        import faiss
        import pyarrow as pa
        import pyarrow.parquet as pq

        d = Path(directory)
        if d.exists() and not d.is_dir():
            raise StoreError(f"{d} exists and is not a directory")
        if d.is_dir() and any(d.iterdir()) and not _is_index_dir(d):
            raise StoreError(f"{d} is not empty and is not a similarity index; choose another --out")
        d.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.faiss_index, str(d / (FAISS_NAME + ".tmp")))
        os.replace(d / (FAISS_NAME + ".tmp"), d / FAISS_NAME)
        table = pa.table({"clip_id": pa.array(self.clip_ids, pa.string()),
                          "path": pa.array(self.paths, pa.string()),
                          "labels": pa.array(self.labels, pa.list_(pa.string()))})
        pq.write_table(table, str(d / (IDS_NAME + ".tmp")), compression="zstd")
        os.replace(d / (IDS_NAME + ".tmp"), d / IDS_NAME)
        if self.preprocessor.kind != "none":
            self.preprocessor.save(d / PREPROCESS_NAME)
        self.manifest.n_clips = len(self.clip_ids)
        (d / (MANIFEST_NAME + ".tmp")).write_text(json.dumps(asdict(self.manifest), indent=2))
        os.replace(d / (MANIFEST_NAME + ".tmp"), d / MANIFEST_NAME)  # last: a complete index has a manifest
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SimilarityIndex:
        """Open an index directory written by :meth:`save`."""
        import faiss
        import pyarrow.parquet as pq

        d = Path(directory)
        mpath = d / MANIFEST_NAME
        if not mpath.is_file():
            raise StoreError(f"{d} is not a similarity index (no {MANIFEST_NAME}); build one with "
                             f"`embedtag index build`")
        if _artifact(mpath) != IndexManifest.artifact:  # e.g. a store's manifest.json
            raise StoreError(f"{d} is not a similarity index ({MANIFEST_NAME} is not an index manifest); build one "
                             f"with `embedtag index build`")
        from embedtag.store import read_manifest

        manifest = read_manifest(mpath, IndexManifest, FORMAT_VERSION)
        for name in (FAISS_NAME, IDS_NAME):
            if not (d / name).is_file():
                raise StoreError(f"{d / name} is missing: the index directory is incomplete")
        try:
            index = faiss.read_index(str(d / FAISS_NAME))
        except RuntimeError as exc:
            raise StoreError(f"{d / FAISS_NAME}: not a readable FAISS index ({str(exc).splitlines()[-1]})") from None
        _apply_search_params(index, manifest.kind, manifest.params)
        table = pq.read_table(d / IDS_NAME)
        pre = Preprocessor.load(d / PREPROCESS_NAME, manifest.preprocess, manifest.embedding_dim)
        out = cls(index, manifest, pre, table.column("clip_id").to_pylist(), table.column("path").to_pylist(),
                  table.column("labels").to_pylist())
        if index.ntotal != len(out.clip_ids):
            raise StoreError(f"{d}: {FAISS_NAME} holds {index.ntotal} vectors but {IDS_NAME} {len(out.clip_ids)} "
                             f"ids; rebuild the index")
        return out

    def set_search_params(self, **params) -> None:
        """Change query-time parameters (``nprobe``, ``k_factor`` for ivfpq; ``ef_search`` for hnsw)."""
        allowed = {"ivfpq": {"nprobe", "k_factor"}, "hnsw": {"ef_search"}}.get(self.manifest.kind, set())
        bad = set(params) - allowed
        if bad:
            raise ValueError(f"kind={self.manifest.kind!r} has no search parameters {sorted(bad)} "
                             f"(it has {sorted(allowed) or 'none'})")
        self.manifest.params.update(params)
        _apply_search_params(self.faiss_index, self.manifest.kind, self.manifest.params)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"SimilarityIndex(backbone={m.backbone!r}, dim={m.embedding_dim}, clips={len(self)}, kind={m.kind!r},"
                f" metric={m.metric!r}, preprocess={m.preprocess.get('kind')!r})")


# ---------------------------------------------------------------------------------------------- building
def build_index(store, kind: str = "auto", metric: str = "cosine", preprocess: str = "none", *,
                whiten_components: int | None = None, whiten_eps: float = 0.1, seed: int = 0,
                progress: bool = False, **index_params) -> SimilarityIndex:
    """A :class:`SimilarityIndex` over every clip of ``store`` (an EmbeddingStore or its path).

    kind: ``auto`` (flat up to AUTO_FLAT_MAX_CLIPS clips, else ivfpq), ``flat`` (exact), ``hnsw``, ``ivfpq``.
    metric: ``cosine`` (L2-normalise, inner product) or ``l2``.
    preprocess: ``none``, ``center`` or ``whiten`` (PCA whitening, ``whiten_components`` / ``whiten_eps``),
    fitted on the store. ``index_params`` override the kind's defaults (see :func:`choose_index`)."""
    from embedtag.store import open_store

    if isinstance(store, (str, os.PathLike)):
        store = open_store(store)
    emb = store.embeddings()
    if len(emb) == 0:
        raise DataError(f"store {store.path} holds no clips; nothing to index")
    t0 = time.perf_counter()
    m = store.manifest
    index = SimilarityIndex.create(emb, backbone=m.backbone, store_key=m.key(), kind=kind, metric=metric,
                                   preprocess=preprocess, whiten_components=whiten_components,
                                   whiten_eps=whiten_eps, seed=seed, **index_params)
    table = store.table(["clip_id", "path", "labels"])
    index.add(emb, table.column("clip_id").to_pylist(), table.column("path").to_pylist(),
              table.column("labels").to_pylist(), progress=progress)
    index.manifest.store_fingerprint = store.fingerprint()
    index.manifest.store_path = str(Path(store.path).resolve())
    index.manifest.build_time_s = round(time.perf_counter() - t0, 3)
    return index


# ---------------------------------------------------------------------------------------------- evaluation
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


def retrieval_metrics(neighbour_labels: list[list[list[str] | None]], query_labels: list[list[str] | None],
                      n_relevant: Sequence[int], k: int) -> tuple[float, float]:
    """precision@k and mAP@k of ranked neighbours; a neighbour is relevant when it shares a label with the query
    (unlabelled neighbours never are). ``n_relevant[i]``: how many clips in the collection are relevant to query i."""
    precs, aps = [], []
    for neigh, ql, n_rel in zip(neighbour_labels, query_labels, n_relevant):
        qs = set(ql or ())
        rel = np.array([bool(qs & set(nl or ())) for nl in neigh[:k]] + [False] * (k - len(neigh[:k])))
        precs.append(rel.mean())
        if n_rel == 0:
            aps.append(0.0)
            continue
        hits = np.cumsum(rel)
        aps.append(float((hits / np.arange(1, k + 1) * rel).sum() / min(k, n_rel)))
    return float(np.mean(precs)), float(np.mean(aps))


def evaluate_index(index: SimilarityIndex, labels: dict[str, list[str] | None] | str | os.PathLike | None = None,
                   *, k: int = 5, store=None, max_queries: int | None = 2000, seed: int = 0) -> IndexEvaluation:
    """Leave-one-out retrieval quality: every labelled clip (or ``max_queries`` of them, at random) queries the
    index for its ``k`` nearest other clips.

    labels: ``{clip_id: [labels]}``, a ``fname,labels`` CSV, or None for the labels kept in the index.
    store: the store the index was built from, for recall@k against exact search of approximate indexes
    (default: the manifest's store path, when it still exists). Exact search uses the same preprocessing and
    metric on the store's original vectors."""
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if labels is None:
        by_id = dict(zip(index.clip_ids, index.labels))
    elif isinstance(labels, dict):
        by_id = labels
    else:
        from embedtag.datasets import read_labels_csv

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
            exact_x = _index_space_from_store(index, store)
    # queries: the clips' exact vectors when known, else what the index keeps of them
    q = exact_x[pool] if exact_x is not None else index._stored_vectors(pool)
    _, rows = index._search_prepared(q, kk, pool)

    prec = mapk = chance = None
    if labelled:
        # relevant = shares a label; count per distinct label set (few of them) instead of per clip pair
        from collections import Counter

        set_counts = Counter(frozenset(all_labels[j]) for j in labelled)
        n_rel = [sum(c for ls, c in set_counts.items() if ls & set(all_labels[i])) - 1 for i in pool]
        neigh = [[all_labels[j] if j >= 0 else None for j in r] for r in rows]
        prec, mapk = retrieval_metrics(neigh, [all_labels[i] for i in pool], n_rel, kk)
        chance = float(np.mean([n / (len(index) - 1) for n in n_rel]))

    recall = None
    if exact_x is not None:
        recall = _recall_vs_exact(exact_x, index.manifest.metric, pool, rows, kk)
    return IndexEvaluation(k=kk, n_queries=len(pool), precision_at_k=prec, map_at_k=mapk, chance_precision=chance,
                           recall_at_k=recall, kind=index.manifest.kind, note="; ".join(note))


def _index_space_from_store(index: SimilarityIndex, store) -> np.ndarray:
    """The store's exact vectors in index space, in index row order."""
    pos = {c: i for i, c in enumerate(store.clip_ids)}
    missing = [c for c in index.clip_ids if c not in pos]
    if missing:
        raise IncompatibleError(f"store {store.path} lacks {len(missing)} indexed clips (e.g. {missing[0]!r}); "
                                f"cannot compute exact neighbours")
    emb = store.embeddings()[[pos[c] for c in index.clip_ids]]
    return _finish(index.preprocessor.transform(emb), index.manifest.metric)


def exact_search(x: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force (scores, rows) of index-space ``queries`` among index-space ``x`` (FAISS flat index)."""
    import faiss

    flat = faiss.IndexFlatIP(x.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(x.shape[1])
    flat.add(np.ascontiguousarray(x, np.float32))
    return flat.search(np.ascontiguousarray(queries, np.float32), k)


def _recall_vs_exact(x: np.ndarray, metric: str, pool: list[int], approx_rows: np.ndarray, k: int) -> float:
    _, exact = exact_search(x, x[pool], k + 1, metric)
    hits = 0
    for i, q in enumerate(pool):
        ex = [j for j in exact[i] if j != q][:k]
        hits += len(set(ex) & set(approx_rows[i][approx_rows[i] >= 0].tolist()))
    return hits / (k * len(pool))


# ---------------------------------------------------------------------------------------------- helpers
def _finish(x: np.ndarray, metric: str) -> np.ndarray:
    """The last step into index space: L2-normalise for cosine (a zero vector stays zero)."""
    x = np.ascontiguousarray(x, np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(x, np.float32)


def _check_choice(name: str, value, choices: Iterable[str]) -> None:
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


class _progress:
    """A rich progress bar when asked for, else a no-op; used as ``with _progress(on, total, what) as advance``."""

    def __init__(self, enabled: bool, total: int, description: str):
        self.enabled, self.total, self.description = enabled, total, description

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import Progress

        self._bar = Progress(transient=True)
        self._bar.__enter__()
        task = self._bar.add_task(self.description, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self._bar.__exit__(*exc)
        return False
