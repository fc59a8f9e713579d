"""The similarity index: a FAISS index plus the clip ids, and what is needed to embed and preprocess queries.

How vectors are compared: each embedding goes through the index's preprocessing (``none``; ``center``: subtract
the store mean; ``whiten``: PCA whitening fitted on the store), then for ``metric="cosine"`` is L2-normalised and
compared by inner product (score = cosine similarity, higher is closer); for ``metric="l2"`` the score is the
Euclidean distance (lower is closer). The files on disk and how updates stay atomic: :mod:`embedtag.search.storage`.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from numbers import Real
from pathlib import Path

import numpy as np

from embedtag import artifacts
from embedtag.errors import ArtifactError, DataError, IncompatibleError, ParamError, WrongKindError
from embedtag.search import storage
from embedtag.search.factory import (
    IVFPQ_MIN_CLIPS,
    MAX_TRAIN_CLIPS,
    apply_search_params,
    choose_index,
    factory_string,
    min_bytes_per_vector,
    new_faiss_index,
    principal_directions,
    projection_dim,
    projection_matrix,
)
from embedtag.search.preprocess import METRICS, PREPROCESSING, Preprocessor, check_choice, to_index_space
from embedtag.search.storage import FAISS_NAME, IDS_NAME, MANIFEST_NAME, PREPROCESS_NAME

#: 1: files beside manifest.json, marked ``"artifact": "embedtag-similarity-index"``; 2: the common artifact
#: header and version directories switched by ``"current"``
FORMAT_VERSION = 2
INDEX_KINDS = ("flat", "hnsw", "ivfpq")
#: how long ``index add`` / ``index build`` wait for another writer of the same index
LOCK_TIMEOUT_S = 600.0
_ADD_CHUNK = 65_536


# ---------------------------------------------------------------------------------------------- manifest
@dataclass
class IndexManifest:
    backbone: str
    embedding_dim: int
    #: the store configuration queries must match (pooling, window_s, sample_rate, weights_sha256)
    store_key: dict
    metric: str
    preprocess: dict
    #: the FAISS index kind: flat, hnsw or ivfpq (``index_kind`` in manifest.json, whose ``kind`` is the header's)
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
    #: the version directory readers open (None: a format 1 index, files beside manifest.json)
    current: str | None = None

    def to_json(self) -> dict:
        """manifest.json: the common artifact header, then the index settings."""
        out = artifacts.header(artifacts.INDEX, FORMAT_VERSION)
        if self.created_at:
            out["created_at"] = self.created_at
        out["updated_at"] = artifacts.now_utc()
        out["current"] = self.current
        out["index_kind"] = self.kind
        skip = {"kind", "format_version", "created_at", "embedtag_version", "current"}
        out.update({k: v for k, v in asdict(self).items() if k not in skip})
        return out

    @classmethod
    def from_meta(cls, meta: dict, path: Path) -> IndexManifest:
        """Validate a parsed manifest.json (format 1 or 2); ArtifactError naming the file and the field."""
        legacy = "index_kind" not in meta and meta.get("artifact") == "embedtag-similarity-index"

        def bad(name: str, problem: str):
            return ArtifactError(f"{path}: field {name!r} {problem}; rebuild the index with `embedtag index build`")

        def get(name: str, types, ok=lambda v: True, what: str = ""):
            if name not in meta:
                raise bad(name, "is missing")
            v = meta[name]
            if not isinstance(v, types) or (isinstance(v, bool) and types is int) or not ok(v):
                raise bad(name, f"must be {what or getattr(types, '__name__', types)}, got {v!r}")
            return v

        kind_field = "kind" if legacy else "index_kind"
        kind = get(kind_field, str, lambda v: v in INDEX_KINDS, f"one of {', '.join(INDEX_KINDS)}")
        params = get("params", dict, what="an object")
        need = {"hnsw": ("ef_search",), "ivfpq": ("nprobe", "k_factor", "pq_m")}.get(kind, ())
        for p in need:
            if not isinstance(params.get(p), (int, float)) or isinstance(params.get(p), bool):
                raise bad("params", f"needs a number {p!r} for a {kind} index")
        preprocess = get("preprocess", dict, lambda v: v.get("kind", "none") in PREPROCESSING,
                         f"an object whose kind is one of {', '.join(PREPROCESSING)}")
        current = None
        if not legacy:
            current = get("current", str, lambda v: bool(storage.VERSION_RE.match(v)), "a version name like v000001")
        return cls(
            backbone=get("backbone", str, lambda v: bool(v), "a backbone name"),
            embedding_dim=get("embedding_dim", int, lambda v: v > 0, "a positive integer"),
            store_key=get("store_key", dict, what="an object") if "store_key" in meta or not legacy else {},
            metric=get("metric", str, lambda v: v in METRICS, f"one of {', '.join(METRICS)}"),
            preprocess=preprocess, kind=kind,
            factory=str(meta.get("factory", "")), params=params,
            n_clips=get("n_clips", int, lambda v: v >= 0, "a count"),
            store_fingerprint=str(meta.get("store_fingerprint") or ""),
            store_path=str(meta.get("store_path") or ""),
            build_time_s=float(meta["build_time_s"]) if isinstance(meta.get("build_time_s"), (int, float)) else 0.0,
            embedtag_version=str(meta.get("embedtag_version") or ""),
            format_version=int(meta.get("format_version", 1)),
            created_at=str(meta.get("created_at") or ""),
            extra=meta["extra"] if isinstance(meta.get("extra"), dict) else {},
            current=current)


def read_manifest(directory: str | os.PathLike) -> IndexManifest:
    """The manifest of the index at ``directory``. Raises WrongKindError naming what the directory is when it
    is no similarity index, ArtifactError naming the file and field when the manifest is corrupt."""
    d = Path(directory)
    try:
        info = artifacts.read_header(d, artifacts.INDEX, FORMAT_VERSION)
    except WrongKindError as exc:
        mpath = d / MANIFEST_NAME
        if exc.found in (None, artifacts.STORE) and mpath.is_file():
            meta = artifacts.load_json(mpath)
            if "index_kind" in meta or "current" in meta:  # an index manifest whose header was edited
                raise ArtifactError(f"{mpath}: field 'kind' is {meta.get('kind')!r}, expected "
                                    f"{artifacts.INDEX!r}; rebuild the index with `embedtag index build`") from None
        raise
    return IndexManifest.from_meta(info.meta, info.meta_path)


# ---------------------------------------------------------------------------------------------- locking
_HELD = threading.local()  # per thread: another thread of this process must wait for the lock like a process


@contextmanager
def locked(directory: str | os.PathLike, timeout_s: float = LOCK_TIMEOUT_S):
    """Hold the writer lock of the index at ``directory`` (re-entrant within this process): whoever loads,
    changes and saves an index inside it cannot lose another process's update."""
    key = str(Path(directory).resolve())
    held = _HELD.__dict__.setdefault("dirs", set())
    if key in held:
        yield
        return
    with artifacts.lock(directory, timeout_s=timeout_s, what="similarity index"):
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)


# ---------------------------------------------------------------------------------------------- results
@dataclass
class QueryResult:
    """The neighbours of one query: ``query`` is its name (a clip id, a file path or ``vector #i``),
    ``query_type`` says which (``clip_id``, ``file``, ``vector``), ``neighbours`` are dicts with ``rank``
    (1-based), ``score``, ``clip_id``, ``path`` and ``labels``."""

    query: str
    query_type: str
    neighbours: list[dict]

    def to_dict(self) -> dict:
        return {"query": self.query, "query_type": self.query_type, "results": self.neighbours}


# ---------------------------------------------------------------------------------------------- the index
class SimilarityIndex:
    """A FAISS index plus the id mapping and what is needed to embed and preprocess queries.

    Make one with :func:`build_index` or :func:`load_index`; row ``i`` of the FAISS index is clip
    ``clip_ids[i]``. Query it with :meth:`search` (vectors, audio files, directories or stored clip ids)."""

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
        #: (resolved directory, version) this index was loaded from or last saved to: saving back over a newer
        #: version written by another process would lose its update
        self._origin: tuple[str, str | None] | None = None

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

        check_choice("metric", metric, METRICS)
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
        xs = to_index_space(pre.transform(sample), metric) if kind == "ivfpq" else None
        projection = None
        if kind == "ivfpq":
            if params["project_dim"] != 0:
                evals, evecs = principal_directions(xs)
                if params["project_dim"] is None:
                    params["project_dim"] = projection_dim(evals, int(params["pq_m"]))
            d = int(params["project_dim"])
            if not 0 <= d <= pre.out_dim or (d and d % int(params["pq_m"])):
                raise ParamError(f"project_dim must be 0 (off) or a multiple of pq_m={params['pq_m']} up to "
                                 f"{pre.out_dim}, got {d}")
            if d:
                projection = projection_matrix(evecs, d, seed)
        factory = factory_string(kind, pre.out_dim, params)
        index = new_faiss_index(kind, pre.out_dim, params, metric, projection)
        if kind == "hnsw":
            faiss.downcast_index(index).hnsw.efConstruction = int(params["ef_construction"])
        if not index.is_trained:
            if kind == "ivfpq":
                faiss.extract_index_ivf(index).cp.seed = seed
            index.train(xs if xs is not None else to_index_space(pre.transform(sample), metric))
        del xs
        apply_search_params(index, kind, params)
        from embedtag import __version__

        manifest = IndexManifest(
            backbone=backbone, embedding_dim=int(train.shape[1]), store_key=dict(store_key or {}), metric=metric,
            preprocess=pre.params(), kind=kind, factory=factory, params=params,
            embedtag_version=__version__, created_at=artifacts.now_utc())
        return cls(index, manifest, pre)

    def add(self, vectors: np.ndarray, clip_ids: Sequence[str], paths: Sequence[str] | None = None,
            labels: Sequence[list[str] | None] | None = None, *, progress: bool = False) -> int:
        """Append raw embeddings with their ids; clip ids already indexed are skipped. Returns how many were added."""
        from embedtag._progress import progress_bar

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
        with progress_bar(progress, len(keep), "indexing", transient=True) as advance:
            for start in range(0, len(keep), _ADD_CHUNK):
                chunk = vectors[start:start + _ADD_CHUNK]
                self.faiss_index.add(self.transform(chunk))
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

        Preprocessing and quantisers stay as fitted at build time. Returns the number of clips added. To update
        an index directory safely against concurrent writers use :func:`add_to_index`."""
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
        try:
            v = np.asarray(vectors, np.float32)
        except (TypeError, ValueError) as exc:
            raise ParamError(f"{what} must be numbers: {exc}") from None
        if v.ndim == 1:
            v = v[None, :]
        dim = self.manifest.embedding_dim
        if v.ndim != 2 or v.shape[1] != dim:
            raise IncompatibleError(f"{what} have dimension {v.shape[-1] if v.ndim else '?'}, but this index holds "
                                    f"{dim}-d {self.manifest.backbone} embeddings")
        if not np.isfinite(v).all():
            raise DataError(f"{what} contain NaN or inf")
        return v

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Raw embeddings -> index space (the index's preprocessing, then L2 normalisation for cosine)."""
        return to_index_space(self.preprocessor.transform(vectors), self.manifest.metric)

    # ------------------------------------------------------------------ search
    def __len__(self) -> int:
        return len(self.clip_ids)

    def search(self, queries, k: int = 10, *, exclude_rows: Sequence[int] | None = None,
               batch_size: int | None = None, device: str = "auto", weights: str | os.PathLike | None = None,
               progress: bool = False) -> list[list[dict]]:
        """The ``k`` nearest indexed clips of each query: per query, a list of dicts with ``rank`` (1-based),
        ``score``, ``clip_id``, ``path``, ``labels``.

        A query is a raw embedding (a 1-D vector, or each row of a 2-D array), the id of a stored clip, an audio
        file (embedded on the fly with the index's backbone, pooling and window) or a directory (each audio file
        in it, recursively, in sorted order, is one query); ``queries`` is one of these or a list of them. A
        stored clip is left out of its own results (it would always be rank 1); a file or a vector skips
        nothing. ``exclude_rows[i]`` (an index row, or -1) is left out of vector query ``i``'s results (arrays
        only). :meth:`search_named` returns the same results with the name of each query."""
        if exclude_rows is not None or _is_vector_batch(queries):
            return self._rows_to_dicts(*self.search_rows(queries, k, exclude_rows=exclude_rows))
        return [r.neighbours for r in self.search_named(queries, k, batch_size=batch_size, device=device,
                                                        weights=weights, progress=progress)]

    #: the name of :meth:`search` before it took vectors, files and clip ids alike
    query = search

    def search_named(self, queries, k: int = 10, *, batch_size: int | None = None, device: str = "auto",
                     weights: str | os.PathLike | None = None, progress: bool = False) -> list[QueryResult]:
        """As :meth:`search`, each query's neighbours carried with its name and type (:class:`QueryResult`)."""
        _check_k(k)
        resolved = self._resolve(queries)
        results: list[list[dict]] = [[] for _ in resolved]
        by_id = [i for i, (t, _, _) in enumerate(resolved) if t == "clip_id"]
        if by_id:
            for i, res in zip(by_id, self.search_ids([resolved[i][1] for i in by_id], k)):
                results[i] = res
        vec = [i for i, (t, _, _) in enumerate(resolved) if t == "vector"]
        if vec:
            for i, res in zip(vec, self._rows_to_dicts(*self.search_rows(np.stack([resolved[i][2] for i in vec]),
                                                                         k))):
                results[i] = res
        files = [i for i, (t, _, _) in enumerate(resolved) if t == "file"]
        if files:
            emb = self.embed_files([resolved[i][1] for i in files], batch_size=batch_size, device=device,
                                   weights=weights, progress=progress)
            for i, res in zip(files, self._rows_to_dicts(*self.search_rows(emb, k))):
                results[i] = res
        return [QueryResult(name, t, res) for (t, name, _), res in zip(resolved, results)]

    def search_rows(self, vectors: np.ndarray, k: int = 10, *, exclude_rows: Sequence[int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (n_queries, k) for raw embeddings; rows are index rows (-1 where fewer than k
        clips qualify)."""
        v = self._check_vectors(vectors, "query vectors")
        return self._search_prepared(self.transform(v), k, exclude_rows)

    def search_ids(self, clip_ids: Sequence[str], k: int = 10) -> list[list[dict]]:
        """Neighbours of indexed clips, each query clip itself left out of its own results."""
        missing = [c for c in clip_ids if c not in self._row]
        if missing:
            raise DataError(f"{missing[0]}: not a clip id in this index")
        rows = [self._row[c] for c in clip_ids]
        return self._rows_to_dicts(*self._search_prepared(self.stored_vectors(rows), k, rows))

    def _search_prepared(self, q: np.ndarray, k: int, exclude_rows: Sequence[int] | None
                         ) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k)
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

    def expand_queries(self, queries) -> list[str]:
        """The names of the queries :meth:`search` answers, in order (directories expanded to their files)."""
        return [name for _, name, _ in self._resolve(queries)]

    def _resolve(self, queries) -> list[tuple[str, str, np.ndarray | None]]:
        """(type, name, vector or None) per query, in order; ``type`` is clip_id, file or vector."""
        if _is_vector_batch(queries) or isinstance(queries, (str, os.PathLike)):
            queries = [queries]
        if not isinstance(queries, (list, tuple)):
            queries = list(queries)
        if not queries:
            raise ParamError("no queries given")
        out: list[tuple[str, str, np.ndarray | None]] = []
        for q in queries:
            if _is_vector_batch(q):
                v = self._check_vectors(q, "query vectors")
                out.extend(("vector", f"vector #{len(out)}", row) for row in v)
                continue
            if not isinstance(q, (str, os.PathLike)):
                raise ParamError(f"a query must be a vector, a clip id or an audio file path, got "
                                 f"{type(q).__name__}")
            s = os.fspath(q)
            if isinstance(s, bytes):
                s = os.fsdecode(s)
            if s in self._row:
                out.append(("clip_id", s, None))
                continue
            p = Path(s)
            try:
                is_dir, is_file = p.is_dir(), p.is_file()
            except (OSError, ValueError):  # a name too long for the file system, an embedded NUL...
                is_dir = is_file = False
            if is_dir:
                from embedtag.inputs import audio_files  # the one owner of folder walking

                out.extend(("file", f, None) for f in audio_files(p)[1])
            elif is_file:
                out.append(("file", s, None))
            else:
                shown = s if len(s) <= 120 else s[:117] + "..."
                raise DataError(f"{shown}: neither a clip id in this index nor an existing audio file or "
                                "directory")
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

    def stored_vectors(self, rows: Sequence[int]) -> np.ndarray:
        """Index-space vectors of indexed rows (exact for flat/HNSW; the 8-bit re-ranking copies for ivfpq, close
        enough to serve as a query)."""
        if len(rows) == 0:
            return np.zeros((0, self.preprocessor.out_dim), np.float32)
        return np.vstack([self.faiss_index.reconstruct(int(r)) for r in rows]).astype(np.float32)

    def set_search_params(self, **params) -> None:
        """Change query-time parameters (``nprobe``, ``k_factor`` for ivfpq; ``ef_search`` for hnsw)."""
        allowed = {"ivfpq": {"nprobe", "k_factor"}, "hnsw": {"ef_search"}}.get(self.manifest.kind, set())
        bad = set(params) - allowed
        if bad:
            raise ParamError(f"kind={self.manifest.kind!r} has no search parameters {sorted(bad)} "
                             f"(it has {sorted(allowed) or 'none'})")
        self.manifest.params.update(params)
        apply_search_params(self.faiss_index, self.manifest.kind, self.manifest.params)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write the index to ``directory`` as a new version, switched in atomically under the index lock.

        Refuses a file, another kind of artifact, a non-empty directory that is no artifact, and (with
        ``overwrite=False``) an existing index. Saving back to the directory it was loaded from fails if another
        process updated it since (its update would be lost): use :func:`add_to_index`, which holds the lock from
        load to save."""
        d = Path(directory)
        artifacts.prepare_output(d, artifacts.INDEX, overwrite=overwrite)
        with locked(d):
            artifacts.prepare_output(d, artifacts.INDEX, overwrite=overwrite)  # again: someone may have won the race
            previous = None
            if artifacts.identify(d) is not None:
                try:
                    previous = read_manifest(d).current
                except ArtifactError:
                    if not overwrite:
                        raise  # with overwrite a broken index is replaced
            if self._origin is not None and self._origin[0] == str(d.resolve()) and self._origin[1] != previous:
                raise ArtifactError(f"{d} was updated by another process since this index was loaded from it; "
                                    "load it again and repeat the change")
            try:
                name = storage.write_version(d, self._write_files)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ArtifactError(f"no space left on device while writing {d}; the index was not "
                                        "changed") from None
                raise ArtifactError(f"cannot write {d}: {exc.strerror or exc}; the index was not changed") from None
            self.manifest.n_clips = len(self)
            self.manifest.current = name
            artifacts.atomic_write_json(d / MANIFEST_NAME, self.manifest.to_json())
            self.manifest.format_version = FORMAT_VERSION
            storage.clean(d, keep={name} | ({previous} if previous else set()))
            self._origin = (str(d.resolve()), name)
        return d

    def _write_files(self, folder: Path) -> None:
        import faiss
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            faiss.write_index(self.faiss_index, str(folder / FAISS_NAME))
        except RuntimeError as exc:  # FAISS reports a failed write as a RuntimeError, without errno
            full = shutil.disk_usage(folder).free < (1 << 20)
            raise OSError(errno.ENOSPC if full else errno.EIO, str(exc).strip().splitlines()[-1]) from None
        table = pa.table({"clip_id": pa.array(self.clip_ids, pa.string()),
                          "path": pa.array(self.paths, pa.string()),
                          "labels": pa.array(self.labels, pa.list_(pa.string()))})
        pq.write_table(table, str(folder / IDS_NAME), compression="zstd")
        if self.preprocessor.kind != "none":
            self.preprocessor.save(folder / PREPROCESS_NAME)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SimilarityIndex:
        """Open an index directory written by :meth:`save` (or by embedtag before versioned indexes)."""
        d = Path(directory)
        for attempt in range(3):
            manifest = read_manifest(d)
            try:
                out = cls._open_version(d, manifest)
            except ArtifactError:
                # a writer may have switched versions and removed the one this manifest named: read it again
                if attempt < 2 and _current_of(d) != manifest.current:
                    continue
                raise
            out._origin = (str(d.resolve()), manifest.current)
            return out
        raise AssertionError("unreachable")

    @classmethod
    def _open_version(cls, d: Path, manifest: IndexManifest) -> SimilarityIndex:
        vdir = storage.version_dir(d, manifest.current)
        mpath = d / MANIFEST_NAME
        if not vdir.is_dir():
            raise ArtifactError(f"{vdir} is missing ({mpath} points at it); rebuild the index")
        pre = Preprocessor.load(vdir / PREPROCESS_NAME, manifest.preprocess, manifest.embedding_dim)
        ids_path, faiss_path = vdir / IDS_NAME, vdir / FAISS_NAME
        if not faiss_path.is_file():
            raise ArtifactError(f"{faiss_path} is missing: the index directory is incomplete; rebuild it with "
                                "`embedtag index build`")
        clip_ids, paths, labels = storage.read_ids(ids_path)
        if len(clip_ids) != manifest.n_clips:
            raise ArtifactError(f"{ids_path} lists {len(clip_ids)} clips but {mpath} says n_clips="
                                f"{manifest.n_clips}; rebuild the index")
        storage.check_faiss_file(faiss_path, n_ids=len(clip_ids), dim=pre.out_dim, ids_path=ids_path,
                                 min_bytes_per_vector=min_bytes_per_vector(manifest.kind, pre.out_dim,
                                                                           manifest.params))
        index = storage.read_faiss(faiss_path)
        if index.ntotal != len(clip_ids) or index.d != pre.out_dim:
            raise ArtifactError(f"{faiss_path} holds {index.ntotal} {index.d}-d vectors but {ids_path} "
                                f"{len(clip_ids)} ids of {pre.out_dim}-d vectors; rebuild the index")
        try:
            apply_search_params(index, manifest.kind, manifest.params)
        except (RuntimeError, AttributeError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{mpath}: field 'index_kind' says {manifest.kind!r}, which {faiss_path} is not "
                                f"({exc}); rebuild the index") from None
        return cls(index, manifest, pre, clip_ids, paths, labels)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"SimilarityIndex(backbone={m.backbone!r}, dim={m.embedding_dim}, clips={len(self)}, kind={m.kind!r},"
                f" metric={m.metric!r}, preprocess={m.preprocess.get('kind')!r})")


def _current_of(d: Path) -> str | None:
    try:
        return read_manifest(d).current
    except ArtifactError:
        return None


def _check_k(k) -> None:
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
        raise ParamError(f"k must be a positive integer, got {k!r}")


def _is_vector_batch(q) -> bool:
    """A numpy array, or a flat list/tuple of numbers (one vector)."""
    if isinstance(q, np.ndarray):
        return True
    return (isinstance(q, (list, tuple)) and len(q) > 0
            and all(isinstance(v, (Real, np.number)) and not isinstance(v, bool) for v in q))


# ---------------------------------------------------------------------------------------------- functions
def build_index(store, kind: str = "auto", metric: str = "cosine", preprocess: str = "none", *,
                whiten_components: int | None = None, whiten_eps: float = 0.1, seed: int = 0,
                progress: bool = False, **index_params) -> SimilarityIndex:
    """A :class:`SimilarityIndex` over every clip of ``store`` (an EmbeddingStore or its path).

    kind: ``auto`` (flat up to AUTO_FLAT_MAX_CLIPS clips, else ivfpq), ``flat`` (exact), ``hnsw``, ``ivfpq``.
    metric: ``cosine`` (L2-normalise, inner product) or ``l2``.
    preprocess: ``none``, ``center`` or ``whiten`` (PCA whitening, ``whiten_components`` / ``whiten_eps``),
    fitted on the store. ``index_params`` override the kind's defaults (see :func:`choose_index`).
    Save it with :meth:`SimilarityIndex.save`."""
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


def load_index(directory: str | os.PathLike) -> SimilarityIndex:
    """Open the similarity index at ``directory`` (see :meth:`SimilarityIndex.load`)."""
    return SimilarityIndex.load(directory)


def index_files(directory: str | os.PathLike) -> dict[str, Path]:
    """The files of the current version of the index at ``directory``: ``{"manifest", "faiss", "ids",
    "preprocess"}`` (the last may not exist: preprocess="none")."""
    d = Path(directory)
    vdir = storage.version_dir(d, read_manifest(d).current)
    return {"manifest": d / MANIFEST_NAME, "faiss": vdir / FAISS_NAME, "ids": vdir / IDS_NAME,
            "preprocess": vdir / PREPROCESS_NAME}


def add_to_index(directory: str | os.PathLike, store, *, progress: bool = False,
                 timeout_s: float = LOCK_TIMEOUT_S) -> tuple[SimilarityIndex, int]:
    """Add the clips of ``store`` (an EmbeddingStore or its path) that the index at ``directory`` lacks, and
    save the result as the index's next version: (the updated index, clips added).

    The index lock is held from load to save, so concurrent calls (other processes too) serialise and each
    sees the previous one's clips; nothing is lost. Waits up to ``timeout_s`` for another writer."""
    from embedtag.store import open_store

    if isinstance(store, (str, os.PathLike)):
        store = open_store(store)
    d = Path(directory)
    read_manifest(d)  # a clear error before creating a lock file in something that is no index
    with locked(d, timeout_s=timeout_s):
        index = SimilarityIndex.load(d)
        before = index.manifest.store_fingerprint
        n = index.add_from_store(store, progress=progress)
        if n or index.manifest.store_fingerprint != before:
            index.save(d)
    return index, n
