"""The embedding store: a directory of Parquet shards plus a JSON manifest.

Layout::

    STORE/
      manifest.json          backbone, weights sha256, dim, pooling, window, sample rate, class names, version
      shards/part-000000.parquet ...   one row per clip (written atomically, one shard per batch)
      errors/part-000000.parquet ...   one row per file that could not be embedded, with the reason

Columns of a shard: ``clip_id`` (str), ``path`` (str), ``duration_s`` (float64), ``sample_rate`` (int32, the
file's own rate), ``channels`` (int16), ``n_windows`` (int32), ``peak`` (float32), ``rms_dbfs`` (float32),
``embedding`` (fixed-size list of float32), ``audioset_scores`` (fixed-size list of float32, when the store keeps
scores) and ``labels`` (list of str, null when the input carried none).

Plain pyarrow and pandas read it: ``pd.read_parquet("STORE/shards")``. Shards are written to a hidden temporary
file and renamed into place, and readers ignore hidden files, so a crash never leaves a half-written shard visible.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedtag.errors import IncompatibleError, StoreError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class StoreManifest:
    backbone: str
    embedding_dim: int
    sample_rate: int
    pooling: str
    window_s: float
    weights_sha256: str | None = None
    #: names of the columns of ``audioset_scores`` (empty when the store keeps no scores)
    class_names: list[str] = field(default_factory=list)
    embedtag_version: str = ""
    format_version: int = FORMAT_VERSION
    created_at: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def has_scores(self) -> bool:
        return bool(self.class_names)

    def key(self) -> dict:
        """What must agree for two runs to write into the same store."""
        return {"backbone": self.backbone, "embedding_dim": self.embedding_dim, "pooling": self.pooling,
                "window_s": float(self.window_s), "sample_rate": self.sample_rate,
                "weights_sha256": self.weights_sha256}


def shard_schema(manifest: StoreManifest) -> pa.Schema:
    fields = [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("duration_s", pa.float64()),
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int16()),
        pa.field("n_windows", pa.int32()),
        pa.field("peak", pa.float32()),
        pa.field("rms_dbfs", pa.float32()),
        pa.field("embedding", pa.list_(pa.float32(), manifest.embedding_dim)),
    ]
    if manifest.has_scores:
        fields.append(pa.field("audioset_scores", pa.list_(pa.float32(), len(manifest.class_names))))
    fields.append(pa.field("labels", pa.list_(pa.string())))
    return pa.schema(fields)


ERROR_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string()), pa.field("path", pa.string()),
    pa.field("reason", pa.string()), pa.field("error_type", pa.string()), pa.field("time", pa.string()),
])


class EmbeddingStore:
    """Read and append clip embeddings. Use :func:`open_store` or :meth:`EmbeddingStore.create`."""

    def __init__(self, path: str | os.PathLike, manifest: StoreManifest):
        self.path = Path(path)
        self.manifest = manifest
        self.schema = shard_schema(manifest)
        self._cache: dict[str, object] = {}
        self._next_shard: dict[str, int] = {}

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(cls, path: str | os.PathLike, manifest: StoreManifest) -> EmbeddingStore:
        """Create a store, or reopen an existing one if its manifest agrees (else IncompatibleError)."""
        path = Path(path)
        if (path / MANIFEST_NAME).exists():
            existing = open_store(path)
            mine, theirs = manifest.key(), existing.manifest.key()
            diff = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
            if diff:
                what = "; ".join(f"{k}: store has {a!r}, this run has {b!r}" for k, (a, b) in diff.items())
                raise IncompatibleError(f"refusing to append to {path}: it was made with another configuration "
                                        f"({what}). Use a new --out directory.")
            if manifest.class_names and not existing.manifest.class_names:
                raise IncompatibleError(f"refusing to append to {path}: it keeps no AudioSet scores")
            return existing
        if path.exists() and any(path.iterdir()):
            raise StoreError(f"{path} exists, is not empty and holds no {MANIFEST_NAME}: not an embedding store")
        from embedtag import __version__

        manifest.embedtag_version = manifest.embedtag_version or __version__
        manifest.created_at = manifest.created_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (path / "shards").mkdir(parents=True, exist_ok=True)
        (path / "errors").mkdir(exist_ok=True)
        _atomic_write_bytes(path / MANIFEST_NAME, json.dumps(asdict(manifest), indent=2).encode())
        return cls(path, manifest)

    # ---------------------------------------------------------------- writing
    def append(self, rows: list[dict]) -> Path | None:
        """Write ``rows`` (dicts with the shard columns) as one new shard, atomically."""
        if not rows:
            return None
        dim = self.manifest.embedding_dim
        emb = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        if emb.shape != (len(rows), dim):
            raise IncompatibleError(f"embeddings of shape {emb.shape[1:]} do not fit store {self.path} (dim {dim})")
        columns = {
            "clip_id": pa.array([str(r["clip_id"]) for r in rows], pa.string()),
            "path": pa.array([str(r.get("path", "")) for r in rows], pa.string()),
            "duration_s": pa.array([float(r.get("duration_s", np.nan)) for r in rows], pa.float64()),
            "sample_rate": pa.array([int(r.get("sample_rate", 0)) for r in rows], pa.int32()),
            "channels": pa.array([int(r.get("channels", 0)) for r in rows], pa.int16()),
            "n_windows": pa.array([int(r.get("n_windows", 1)) for r in rows], pa.int32()),
            "peak": pa.array([float(r.get("peak", np.nan)) for r in rows], pa.float32()),
            "rms_dbfs": pa.array([float(r.get("rms_dbfs", np.nan)) for r in rows], pa.float32()),
            "embedding": _fixed_list(emb),
        }
        if self.manifest.has_scores:
            n_cls = len(self.manifest.class_names)
            scores = np.asarray([r["audioset_scores"] for r in rows], dtype=np.float32).reshape(len(rows), n_cls)
            columns["audioset_scores"] = _fixed_list(scores)
        columns["labels"] = pa.array([None if r.get("labels") is None else list(r["labels"]) for r in rows],
                                     pa.list_(pa.string()))
        table = pa.table(columns, schema=self.schema)
        out = self._write_shard("shards", table)
        self._cache.clear()
        return out

    def add_errors(self, rows: list[dict]) -> Path | None:
        """Record files that could not be embedded (clip_id, path, reason, error_type)."""
        if not rows:
            return None
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        table = pa.table({
            "clip_id": [str(r["clip_id"]) for r in rows], "path": [str(r.get("path", "")) for r in rows],
            "reason": [str(r["reason"]) for r in rows], "error_type": [str(r.get("error_type", "")) for r in rows],
            "time": [now] * len(rows)}, schema=ERROR_SCHEMA)
        out = self._write_shard("errors", table)
        self._cache.clear()
        return out

    def _write_shard(self, sub: str, table: pa.Table) -> Path:
        folder = self.path / sub
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=folder)
        os.close(fd)
        try:
            pq.write_table(table, tmp, compression="zstd")
            if sub not in self._next_shard:  # listed once per process; later shards just count up
                self._next_shard[sub] = len(_visible(folder))
            n = self._next_shard[sub]
            while True:  # a concurrent writer may have taken the name: link() fails instead of overwriting
                target = folder / f"part-{n:06d}.parquet"
                try:
                    os.link(tmp, target)
                    self._next_shard[sub] = n + 1
                    break
                except FileExistsError:
                    n += 1
        finally:
            os.unlink(tmp)
        return target

    # ---------------------------------------------------------------- reading
    def shard_paths(self) -> list[Path]:
        return _visible(self.path / "shards")

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """All rows in shard order as one pyarrow Table."""
        key = ("table", tuple(columns) if columns else None)
        if key not in self._cache:
            paths = self.shard_paths()
            if not paths:
                t = self.schema.empty_table()
                self._cache[key] = t.select(columns) if columns else t
            else:
                self._cache[key] = pa.concat_tables(
                    [pq.read_table(p, columns=columns, schema=self.schema) for p in paths])
        return self._cache[key]

    def to_pandas(self, columns: list[str] | None = None):
        return self.table(columns).to_pandas()

    def __len__(self) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.shard_paths())

    @property
    def clip_ids(self) -> list[str]:
        return self.table(["clip_id"]).column("clip_id").to_pylist()

    def embeddings(self) -> np.ndarray:
        """(n_clips, dim) float32, rows in the order of :attr:`clip_ids`."""
        return _fixed_to_numpy(self.table(["embedding"]).column("embedding"), self.manifest.embedding_dim)

    def scores(self) -> np.ndarray | None:
        """(n_clips, n_classes) AudioSet scores, or None when the store keeps none."""
        if not self.manifest.has_scores:
            return None
        return _fixed_to_numpy(self.table(["audioset_scores"]).column("audioset_scores"),
                               len(self.manifest.class_names))

    def labels(self) -> list[list[str] | None]:
        return self.table(["labels"]).column("labels").to_pylist()

    def errors(self):
        """Files that failed, as a pandas DataFrame (clip_id, path, reason, error_type, time)."""
        paths = _visible(self.path / "errors")
        if not paths:
            return ERROR_SCHEMA.empty_table().to_pandas()
        return pa.concat_tables([pq.read_table(p) for p in paths]).to_pandas()

    def done_ids(self) -> set[str]:
        """clip_ids already stored or already recorded as failed (a rerun skips both)."""
        ids = set(self.clip_ids)
        ids.update(self.errors()["clip_id"].tolist())
        return ids

    def fingerprint(self) -> str:
        """Changes whenever a shard is added: for indexes and heads built from this store."""
        import hashlib

        h = hashlib.sha256(json.dumps(self.manifest.key(), sort_keys=True).encode())
        for p in self.shard_paths():
            h.update(f"{p.name}:{p.stat().st_size}".encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        m = self.manifest
        return f"EmbeddingStore({str(self.path)!r}, backbone={m.backbone!r}, dim={m.embedding_dim}, clips={len(self)})"


def open_store(path: str | os.PathLike) -> EmbeddingStore:
    """Open an existing store (StoreError if ``path`` is not one)."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise StoreError(f"{path} is not an embedding store (no {MANIFEST_NAME}); create one with `embedtag extract`")
    return EmbeddingStore(path, read_manifest(manifest_path, StoreManifest, FORMAT_VERSION))


M = TypeVar("M")


def read_manifest(path: Path, cls: type[M], format_version: int) -> M:
    """The JSON manifest at ``path`` as dataclass ``cls`` (keys ``cls`` does not know are ignored); StoreError
    naming the file when it is corrupt or from a newer format than ``format_version``. Shared by the store and
    the similarity index."""
    try:
        data = json.loads(path.read_text())
        known = set(cls.__dataclass_fields__)
        manifest = cls(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError, AttributeError) as exc:
        raise StoreError(f"{path} is corrupt: {exc}") from None
    if manifest.format_version > format_version:
        raise StoreError(f"{path.parent} was written by a newer embedtag (format {manifest.format_version}); "
                         "upgrade embedtag")
    return manifest


def _visible(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(matrix, np.float32).ravel()),
                                             matrix.shape[1])


def _fixed_to_numpy(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    if column.num_chunks == 0 or len(column) == 0:
        return np.zeros((0, dim), np.float32)
    arr = column.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
