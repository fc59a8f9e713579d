"""The embedding store: a directory of Parquet shards plus a JSON manifest.

Layout::

    STORE/
      manifest.json          common artifact header (kind "embedding-store", format_version, embedtag_version,
                             created_at), then backbone, weights sha256, dim, pooling, window, sample rate, classes
      shards/part-000000.parquet ...   one row per clip (written atomically, one shard per batch)
      errors/part-000000.parquet ...   files that could not be embedded, with the reason (batched, not one per file)
      labels.parquet         labels attached or changed after the clips were stored (clip_id, labels); optional
      quarantine/            shards ``embedtag store repair`` moved aside (their clips are extracted again)
      .lock                  held by the one process writing the store

Columns of a shard: ``clip_id`` (str), ``path`` (str), ``duration_s`` (float64), ``sample_rate`` (int32, the
file's own rate), ``channels`` (int16), ``n_windows`` (int32), ``peak`` (float32), ``rms_dbfs`` (float32),
``embedding`` (fixed-size list of float32), ``audioset_scores`` (fixed-size list of float32, when the store keeps
scores) and ``labels`` (list of str, null when the input carried none).

Plain pyarrow and pandas read it: ``pd.read_parquet("STORE/shards")`` (without the labels overlay and the
de-duplication below). Shards are written to a hidden temporary file and renamed into place, and readers ignore
hidden files, so a crash never leaves a half-written shard visible.

Writers take the store's lock (``with store.writing(): ...``), so two processes never append at once; readers
de-duplicate by ``clip_id`` all the same (the last written row wins), so a duplicate written by an older embedtag
never reaches a head or an index. Text that is not valid UTF-8 (a file name with a ``\\xff`` byte) is stored with
the bad bytes written as ``\\xff`` escapes; :func:`resolve_path` turns such a stored path back into the file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedtag import artifacts
from embedtag.artifacts import STORE
from embedtag.errors import ArtifactError, DataError, IncompatibleError, ParamError, StoreError
from embedtag.inputs import safe_text

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LABELS_NAME = "labels.parquet"
QUARANTINE = "quarantine"
#: a second writer waits this long for the store's lock, then refuses ("another embedtag process is writing")
LOCK_TIMEOUT_S = 10.0
#: failed files are buffered and written as one errors shard per this many rows (and when the writer ends)
ERROR_FLUSH_ROWS = 256
#: ... or when the oldest buffered failure is this old, so a long run does not hold many in memory
ERROR_FLUSH_S = 60.0


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
    kind: str = STORE

    @property
    def has_scores(self) -> bool:
        return bool(self.class_names)

    def key(self) -> dict:
        """What must agree for two runs to write into the same store."""
        return {"backbone": self.backbone, "embedding_dim": self.embedding_dim, "pooling": self.pooling,
                "window_s": float(self.window_s), "sample_rate": self.sample_rate,
                "weights_sha256": self.weights_sha256}

    def problems(self) -> list[tuple[str, str]]:
        """(field, what is wrong) for values of the right type but out of range."""
        out = []
        if self.embedding_dim < 1:
            out.append(("embedding_dim", f"must be >= 1, got {self.embedding_dim}"))
        if self.sample_rate < 1:
            out.append(("sample_rate", f"must be >= 1, got {self.sample_rate}"))
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            out.append(("window_s", f"must be a finite number > 0, got {self.window_s!r}"))
        if not self.backbone:
            out.append(("backbone", "must not be empty"))
        if not self.pooling:
            out.append(("pooling", "must not be empty"))
        return out


def shard_schema(manifest: StoreManifest) -> pa.Schema:
    fields_ = [
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
        fields_.append(pa.field("audioset_scores", pa.list_(pa.float32(), len(manifest.class_names))))
    fields_.append(pa.field("labels", pa.list_(pa.string())))
    return pa.schema(fields_)


ERROR_SCHEMA = pa.schema([
    pa.field("clip_id", pa.string()), pa.field("path", pa.string()),
    pa.field("reason", pa.string()), pa.field("error_type", pa.string()), pa.field("time", pa.string()),
])
LABELS_SCHEMA = pa.schema([pa.field("clip_id", pa.string()), pa.field("labels", pa.list_(pa.string()))])


# ------------------------------------------------------------------------------------------------ text
#: text as the store keeps it (valid UTF-8; a non-UTF-8 file name's bytes as \\xNN escapes)
storable = safe_text


_ESCAPED_BYTE = re.compile(r"\\x([89a-fA-F][0-9a-fA-F])")


def resolve_path(stored: str) -> str:
    """The file a stored ``path`` names: itself, or, when it carries ``\\xNN`` escapes written by
    :func:`storable` and does not exist as written, the file name with those raw bytes."""
    if not stored or os.path.exists(stored) or "\\x" not in stored:
        return stored
    raw = _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), stored)
    return raw if os.path.exists(raw) else stored


# ------------------------------------------------------------------------------------------------ the store
@dataclass
class StoreCheck:
    """What :meth:`EmbeddingStore.check` found. ``problems``: (file, what is wrong), one per bad file."""

    store: str
    problems: list[tuple[str, str]] = field(default_factory=list)
    n_shards: int = 0
    n_error_shards: int = 0
    n_rows: int = 0
    n_clips: int = 0
    n_failed: int = 0
    n_temporaries: int = 0
    quarantined: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def n_duplicates(self) -> int:
        return self.n_rows - self.n_clips

    def as_dict(self) -> dict:
        d = asdict(self)
        d["problems"] = [{"file": f, "problem": p} for f, p in self.problems]
        d.update(ok=self.ok, n_duplicates=self.n_duplicates)
        return d


class EmbeddingStore:
    """Read and append clip embeddings. Use :func:`open_store` or :meth:`EmbeddingStore.create`.

    Writing::

        with store.writing():          # the store's lock; failed files are flushed in batches on exit
            store.append(rows)
            store.add_errors(rows)

    ``append`` / ``add_errors`` / ``set_labels`` outside ``writing()`` take the lock for that one call."""

    def __init__(self, path: str | os.PathLike, manifest: StoreManifest):
        self.path = Path(path)
        self.manifest = manifest
        self.schema = shard_schema(manifest)
        self._cache: dict[object, object] = {}
        self._next_shard: dict[str, int] = {}
        self._lock: artifacts.lock | None = None
        self._lock_depth = 0
        self._error_buffer: list[dict] = []
        self._error_buffer_since = 0.0

    # ---------------------------------------------------------------- creation
    @classmethod
    def create(cls, path: str | os.PathLike, manifest: StoreManifest) -> EmbeddingStore:
        """Create a store, or reopen an existing one if its manifest agrees (else IncompatibleError).

        Refuses a directory that holds another kind of artifact, or files that are no store. Creating takes the
        store's lock, so two processes creating one store at once agree on one manifest. A store that keeps
        AudioSet scores keeps them when a run asks for none (and one that keeps none stays so): appending
        follows the layout the store was created with."""
        path = Path(path)
        artifacts.prepare_output(path, STORE, resume=True)
        with artifacts.lock(path, LOCK_TIMEOUT_S, what="embedding store"):
            if (path / MANIFEST_NAME).exists():
                existing = open_store(path)
                existing._check_key(manifest)
                return existing
            from embedtag import __version__

            head = artifacts.header(STORE, FORMAT_VERSION)
            manifest.embedtag_version = manifest.embedtag_version or __version__
            manifest.created_at = manifest.created_at or head["created_at"]
            manifest.format_version, manifest.kind = FORMAT_VERSION, STORE
            body = asdict(manifest)
            meta = {k: body.pop(k) for k in artifacts.HEADER_KEYS}
            # the manifest first: a process killed before it leaves only hidden files, which a rerun may reuse
            artifacts.atomic_write_json(path / MANIFEST_NAME, {**meta, **body})
            (path / "shards").mkdir(exist_ok=True)
            (path / "errors").mkdir(exist_ok=True)
            return cls(path, manifest)

    def _check_key(self, manifest: StoreManifest) -> None:
        mine, theirs = manifest.key(), self.manifest.key()
        diff = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
        if diff:
            what = "; ".join(f"{k}: store has {a!r}, this run has {b!r}" for k, (a, b) in diff.items())
            raise IncompatibleError(f"refusing to append to {self.path}: it was made with another configuration "
                                    f"({what}). Use a new --out directory.")

    # ---------------------------------------------------------------- writing
    @contextmanager
    def writing(self, timeout_s: float | None = None):
        """Hold the store's lock for a series of writes (a second writer waits ``timeout_s``, default
        :data:`LOCK_TIMEOUT_S`, then gets an ArtifactError naming the process that holds it). On entry, removes
        the hidden temporary files a killed writer left and re-reads the manifest (a process that waited must
        not append to a store another one re-created with other settings); on exit, also on an exception or
        Ctrl-C, flushes the buffered failures."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        lk = artifacts.lock(self.path, LOCK_TIMEOUT_S if timeout_s is None else timeout_s, what="embedding store")
        with lk:
            self._lock, self._lock_depth = lk, 1
            self._cache.clear()
            self._next_shard.clear()
            try:
                current = open_store(self.path).manifest
                self._check_key(current)
                if current.has_scores != self.manifest.has_scores:
                    raise IncompatibleError(f"{self.path}: the store was re-created while waiting for it; "
                                            "open it again")
                for sub in ("shards", "errors", ""):
                    artifacts.clean_temporaries(self.path / sub)
                ok = False
                try:
                    yield self
                    ok = True
                finally:
                    try:
                        self.flush_errors()
                    except Exception:
                        if ok:
                            raise
                        # the first failure (disk full, Ctrl-C) is the one to report; these clips are retried
            finally:
                self._lock, self._lock_depth = None, 0

    @contextmanager
    def _locked(self):
        with self.writing():
            yield

    def append(self, rows: list[dict]) -> Path | None:
        """Write ``rows`` (dicts with the shard columns) as one new shard, atomically."""
        if not rows:
            return None
        if not self._lock_depth:
            with self.writing():
                return self.append(rows)
        dim = self.manifest.embedding_dim
        emb = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        if emb.shape != (len(rows), dim):
            raise IncompatibleError(f"embeddings of shape {emb.shape[1:]} do not fit store {self.path} (dim {dim})")
        columns = {
            "clip_id": _strings([storable(r["clip_id"]) for r in rows]),
            "path": _strings([storable(r.get("path", "")) for r in rows]),
            "duration_s": _numbers([float(r.get("duration_s", np.nan)) for r in rows], pa.float64()),
            "sample_rate": _numbers([int(r.get("sample_rate", 0)) for r in rows], pa.int32()),
            "channels": _numbers([int(r.get("channels", 0)) for r in rows], pa.int16()),
            "n_windows": _numbers([int(r.get("n_windows", 1)) for r in rows], pa.int32()),
            "peak": _numbers([float(r.get("peak", np.nan)) for r in rows], pa.float32()),
            "rms_dbfs": _numbers([float(r.get("rms_dbfs", np.nan)) for r in rows], pa.float32()),
            "embedding": _fixed_list(emb),
        }
        if self.manifest.has_scores:
            n_cls = len(self.manifest.class_names)
            if any(r.get("audioset_scores") is None for r in rows):
                raise IncompatibleError(f"{self.path} keeps AudioSet scores ({n_cls} classes) but these rows have "
                                        "none")
            scores = np.asarray([r["audioset_scores"] for r in rows], dtype=np.float32)
            if scores.shape != (len(rows), n_cls):
                raise IncompatibleError(f"AudioSet scores of shape {scores.shape[1:]} do not fit store {self.path} "
                                        f"({n_cls} classes)")
            columns["audioset_scores"] = _fixed_list(scores)
        columns["labels"] = _string_lists([_label_list(r.get("labels")) for r in rows])
        table = _table(columns, self.schema)
        out = self._write_shard("shards", table)
        self._cache.clear()
        return out

    def add_errors(self, rows: list[dict]) -> None:
        """Record files that could not be embedded (clip_id, path, reason, error_type). Inside
        :meth:`writing` they are buffered and written in batches; outside, at once."""
        if not rows:
            return
        now = artifacts.now_utc()
        if not self._error_buffer:
            self._error_buffer_since = time.monotonic()
        self._error_buffer += [{"clip_id": storable(r["clip_id"]), "path": storable(r.get("path", "")),
                                "reason": storable(r["reason"]), "error_type": storable(r.get("error_type", "")),
                                "time": now} for r in rows]
        if (not self._lock_depth or len(self._error_buffer) >= ERROR_FLUSH_ROWS
                or time.monotonic() - self._error_buffer_since >= ERROR_FLUSH_S):
            self.flush_errors()

    def flush_errors(self) -> Path | None:
        """Write the buffered failures as one errors shard."""
        if not self._error_buffer:
            return None
        if not self._lock_depth:
            with self.writing():  # flushes on exit
                return None
        rows, self._error_buffer = self._error_buffer, []
        table = _table({k: _strings([r[k] for r in rows]) for k in ERROR_SCHEMA.names}, ERROR_SCHEMA)
        try:
            out = self._write_shard("errors", table)
        except BaseException:
            self._error_buffer = rows + self._error_buffer
            raise
        self._cache.clear()
        return out

    def set_labels(self, mapping: dict[str, list[str] | None], *, ignore_missing: bool = False) -> int:
        """Attach or change the labels of stored clips: ``{clip_id: [label, ...] or None}``. Kept in the store's
        ``labels.parquet`` overlay (written atomically) and applied by every reader. Clip ids that are not in the
        store raise DataError (unless ``ignore_missing``). Returns how many clips got new labels."""
        clean: dict[str, list[str] | None] = {}
        for cid, lab in mapping.items():
            if lab is not None and (isinstance(lab, str) or not all(isinstance(v, str) for v in lab)):
                raise ParamError(f"labels of {cid!r} must be a list of strings or None, got {lab!r}")
            clean[storable(cid)] = _label_list(lab)
        with self._locked():
            stored = self.stored_ids()
            missing = [c for c in clean if c not in stored]
            if missing and not ignore_missing:
                raise DataError(f"{len(missing)} clip id(s) are not in {self.path}: "
                                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
            current = dict(zip(self.clip_ids, self.labels()))
            changes = {c: v for c, v in clean.items() if c in stored and current.get(c) != v}
            if not changes:
                return 0
            overlay = self._overlay()
            overlay.update(changes)
            table = _table({"clip_id": _strings(list(overlay)), "labels": _string_lists(list(overlay.values()))},
                           LABELS_SCHEMA)
            self._atomic_parquet(self.path / LABELS_NAME, table)
            self._cache.clear()
            return len(changes)

    def _write_shard(self, sub: str, table: pa.Table) -> Path:
        folder = self.path / sub
        folder.mkdir(parents=True, exist_ok=True)
        if sub not in self._next_shard:  # listed once per lock; the lock keeps other writers out meanwhile
            nums = [int(m.group(1)) for p in folder.glob("part-*.parquet")
                    if (m := re.fullmatch(r"part-(\d+)\.parquet", p.name))]
            self._next_shard[sub] = max(nums, default=-1) + 1
        n = self._next_shard[sub]
        while (folder / f"part-{n:06d}.parquet").exists():
            n += 1
        target = folder / f"part-{n:06d}.parquet"
        self._atomic_parquet(target, table)
        self._next_shard[sub] = n + 1
        return target

    @staticmethod
    def _atomic_parquet(target: Path, table: pa.Table) -> None:
        def write(tmp: str) -> None:
            try:
                # no dictionary for the float vectors: they seldom repeat, and trying costs (measured on a real
                # 63-clip YAMNet shard: 10.6 -> 5.2 ms to write, 260 -> 178 KB)
                pq.write_table(table, tmp, compression="zstd", use_dictionary=[
                    f"{f.name}.list.element" if pa.types.is_list(f.type) else f.name
                    for f in table.schema if not pa.types.is_fixed_size_list(f.type)])
            except OSError as exc:  # Arrow reports a full disk in its message, without an errno
                if exc.errno is None and "No space left" in str(exc):
                    raise OSError(errno.ENOSPC, str(exc)) from None
                raise

        artifacts.atomic_write(target, write)

    # ---------------------------------------------------------------- reading
    def shard_paths(self) -> list[Path]:
        return _visible(self.path / "shards")

    def error_paths(self) -> list[Path]:
        return _visible(self.path / "errors")

    def _bad(self, path: Path, what: str) -> StoreError:
        exc = StoreError(f"{path}: {what}; run `embedtag store repair {self.path}` to move it aside (its clips "
                         "are extracted again on the next run)")
        exc.problem = what  # type: ignore[attr-defined]  # for check(): the bare reason
        return exc

    def _read_file(self, path: Path, want: pa.Schema, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file of the store, checked against ``want``; StoreError naming it when it is unreadable
        or of another layout (a shard of a 384-d store in a 1024-d one)."""
        try:
            pf = pq.ParquetFile(path)
            have = pf.schema_arrow
        except Exception as exc:  # truncated, garbage, not Parquet: Arrow's many exception types
            raise self._bad(path, f"not a readable Parquet file ({_short(exc)})") from None
        problem = _schema_problem(have, want)
        if problem:
            raise self._bad(path, problem)
        cols = list(columns) if columns is not None else want.names
        try:
            t = pf.read(columns=cols)
            target = pa.schema([want.field(c) for c in cols])
            return t if t.schema.equals(target) else t.cast(target)  # cast imports pyarrow.compute (~0.1 s)
        except Exception as exc:
            raise self._bad(path, f"corrupt ({_short(exc)})") from None

    def _raw(self, columns: tuple[str, ...]) -> pa.Table:
        """Every shard's rows (duplicates included) of ``columns``, in shard order."""
        key = ("raw", columns)
        if key not in self._cache:
            paths = self.shard_paths()
            sub = pa.schema([self.schema.field(c) for c in columns])
            tables = [self._read_file(p, self.schema, list(columns)) for p in paths]
            self._cache[key] = _concat(tables, sub)
        return self._cache[key]

    def _keep(self) -> np.ndarray | None:
        """Row numbers of the last row of each clip id, in shard order; None when there is no duplicate."""
        if "keep" not in self._cache:
            ids = self._raw(("clip_id",)).column("clip_id").to_pylist()
            last = {cid: i for i, cid in enumerate(ids)}
            self._cache["keep"] = None if len(last) == len(ids) else np.sort(np.fromiter(last.values(), np.int64))
        return self._cache["keep"]

    def _overlay(self) -> dict[str, list[str] | None]:
        if "overlay" not in self._cache:
            p = self.path / LABELS_NAME
            overlay = {}
            if p.is_file():
                t = self._read_file(p, LABELS_SCHEMA)
                overlay = dict(zip(t.column("clip_id").to_pylist(), t.column("labels").to_pylist()))
            self._cache["overlay"] = overlay
        return self._cache["overlay"]

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """All clips in shard order as one pyarrow Table: one row per clip id (the last written, should a clip
        have been stored twice), labels as changed by :meth:`set_labels`."""
        cols = tuple(columns) if columns else tuple(self.schema.names)
        unknown = [c for c in cols if c not in self.schema.names]
        if unknown:
            raise ParamError(f"{self.path}: no column {unknown[0]!r}; the store has {', '.join(self.schema.names)}")
        key = ("table", cols)
        if key not in self._cache:
            read = cols if "clip_id" in cols or "labels" not in cols else ("clip_id", *cols)
            t = self._raw(read)
            keep = self._keep()
            if keep is not None:
                t = t.take(_numbers(keep, pa.int64()))
            overlay = self._overlay()
            if "labels" in cols and overlay:
                ids = t.column("clip_id").to_pylist()
                labs = t.column("labels").to_pylist()
                new = [overlay[c] if c in overlay else v for c, v in zip(ids, labs)]
                t = t.set_column(t.schema.get_field_index("labels"), self.schema.field("labels"),
                                 _string_lists(new))
            self._cache[key] = t.select(list(cols))
        return self._cache[key]

    def to_pandas(self, columns: list[str] | None = None):
        return self.table(columns).to_pandas()

    def __len__(self) -> int:
        return len(self.clip_ids)

    def n_rows(self) -> int:
        """Rows in the shards, a clip stored twice counted twice (``len(store)`` counts clips)."""
        return len(self._raw(("clip_id",)))

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

    def stored_ids(self) -> set[str]:
        """Clip ids with an embedding in the store (what a rerun of ``extract`` skips)."""
        return set(self.clip_ids)

    def done_ids(self) -> set[str]:
        """Deprecated name of :meth:`stored_ids` (failed clips are retried now, so they are not "done")."""
        return self.stored_ids()

    def _error_table(self) -> pa.Table:
        if "errors" not in self._cache:
            tables = [self._read_file(p, ERROR_SCHEMA) for p in self.error_paths()]
            self._cache["errors"] = _concat(tables, ERROR_SCHEMA)
        return self._cache["errors"]

    def errors(self, history: bool = False):
        """Files that failed and are still not stored, as a pandas DataFrame (clip_id, path, reason, error_type,
        time): one row per clip, its latest failure. ``history=True``: every failure ever recorded."""
        df = self._error_table().to_pandas()
        if history or df.empty:
            return df
        df = df.drop_duplicates("clip_id", keep="last")
        return df[~df["clip_id"].isin(self.stored_ids())].reset_index(drop=True)

    def failed_ids(self) -> set[str]:
        """Clip ids recorded as failed and not stored since (a rerun of ``extract`` tries them again)."""
        return set(self._error_table().column("clip_id").to_pylist()) - self.stored_ids()

    def fingerprint(self) -> str:
        """Changes whenever a shard is added or labels change: for indexes and heads built from this store."""
        import hashlib

        h = hashlib.sha256(json.dumps(self.manifest.key(), sort_keys=True).encode())
        for p in self.shard_paths():
            h.update(f"{p.name}:{p.stat().st_size}".encode())
        overlay = self.path / LABELS_NAME
        if overlay.is_file():
            h.update(f"{LABELS_NAME}:{overlay.stat().st_size}:{overlay.stat().st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    # ---------------------------------------------------------------- verification
    def check(self) -> StoreCheck:
        """Read every shard, errors shard and the labels overlay in full and check each against the store's
        layout; one problem per bad file (nothing raised for a bad file)."""
        report = StoreCheck(str(self.path))
        ids: list[str] = []
        for p in self.shard_paths():
            report.n_shards += 1
            try:
                t = self._read_file(p, self.schema)
            except StoreError as exc:
                report.problems.append((str(p), exc.problem))
                continue
            if t.column("clip_id").null_count:
                report.problems.append((str(p), "rows without a clip_id"))
                continue
            ids += t.column("clip_id").to_pylist()
        for p in self.error_paths():
            report.n_error_shards += 1
            try:
                self._read_file(p, ERROR_SCHEMA)
            except StoreError as exc:
                report.problems.append((str(p), exc.problem))
        lp = self.path / LABELS_NAME
        if lp.is_file():
            try:
                self._read_file(lp, LABELS_SCHEMA)
            except StoreError as exc:
                report.problems.append((str(lp), exc.problem))
        report.n_rows, report.n_clips = len(ids), len(set(ids))
        bad = {Path(f) for f, _ in report.problems}
        if not bad:
            report.n_failed = len(self.failed_ids())
        report.n_temporaries = sum(len(list((self.path / sub).glob(".tmp-*"))) for sub in ("shards", "errors", ""))
        report.quarantined = sorted(p.name for p in (self.path / QUARANTINE).glob("*")) \
            if (self.path / QUARANTINE).is_dir() else []
        return report

    def repair(self) -> StoreCheck:
        """Move every bad file :meth:`check` finds to ``STORE/quarantine/`` (their clips are no longer stored,
        so the next ``extract`` embeds them again) and remove temporary files killed writers left. Returns the
        check made before repairing, with ``quarantined`` listing what was moved now."""
        with self._locked():
            report = self.check()
            moved = []
            if report.problems:
                q = self.path / QUARANTINE
                q.mkdir(exist_ok=True)
                for f, _ in report.problems:
                    src = Path(f)
                    name = f"{src.parent.name}-{src.name}" if src.parent != self.path else src.name
                    dst = q / name
                    n = 1
                    while dst.exists():
                        dst = q / f"{name}.{n}"
                        n += 1
                    os.replace(src, dst)
                    moved.append(dst.name)
            report.quarantined = moved
            self._cache.clear()
            return report  # writing() removed the temporaries on entry

    def __repr__(self) -> str:
        m = self.manifest
        try:
            n = str(len(self))
        except StoreError:  # a bad shard; the repr must not raise
            n = "?"
        return f"EmbeddingStore({str(self.path)!r}, backbone={m.backbone!r}, dim={m.embedding_dim}, clips={n})"


def open_store(path: str | os.PathLike) -> EmbeddingStore:
    """Open an existing store. WrongKindError (a StoreError) when ``path`` is something else ("X is a similarity
    index, not an embedding store"); StoreError naming the file and field when the manifest is damaged."""
    try:
        info = artifacts.read_header(path, STORE, FORMAT_VERSION)
    except StoreError:
        raise
    except ArtifactError as exc:  # corrupt or newer: a StoreError like every other problem of a store
        raise StoreError(str(exc)) from None
    return EmbeddingStore(Path(path), read_manifest(info.meta_path, StoreManifest, FORMAT_VERSION))


M = TypeVar("M")


def read_manifest(path: Path, cls: type[M], format_version: int) -> M:
    """The JSON manifest at ``path`` as dataclass ``cls``, validated field by field against ``cls``'s type
    hints (keys ``cls`` does not know are ignored); StoreError naming the file and the field when it is corrupt,
    a field is missing or of the wrong type, or it is from a newer format than ``format_version``. Shared by
    the store and the similarity index."""
    path = Path(path)
    data = artifacts.load_json(path, error=StoreError)
    manifest = artifacts.validated(data, cls, path, error=StoreError)
    version = getattr(manifest, "format_version", 1)
    if version > format_version:
        raise StoreError(f"{path.parent} was written by a newer embedtag (format {version}); upgrade embedtag")
    problems = manifest.problems() if hasattr(manifest, "problems") else []
    if problems:
        name, what = problems[0]
        raise StoreError(f"{path}: field {name!r} {what}")
    return manifest


def _schema_problem(have: pa.Schema, want: pa.Schema) -> str | None:
    """Why a file with schema ``have`` cannot be read as ``want`` (None when it can)."""
    for f in want:
        if f.name not in have.names:
            return f"no {f.name!r} column (columns: {', '.join(have.names)})"
        got = have.field(f.name).type
        if not _same_type(got, f.type):
            if pa.types.is_fixed_size_list(got) and pa.types.is_fixed_size_list(f.type):
                return f"{f.name!r} has {got.list_size} values per row, the store holds {f.type.list_size}"
            return f"column {f.name!r} is {got}, expected {f.type}"
    return None


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    if pa.types.is_fixed_size_list(a) or pa.types.is_fixed_size_list(b):
        return (pa.types.is_fixed_size_list(a) and pa.types.is_fixed_size_list(b) and a.list_size == b.list_size
                and _same_type(a.value_type, b.value_type))
    if pa.types.is_list(a) or pa.types.is_large_list(a):
        return (pa.types.is_list(b) or pa.types.is_large_list(b)) and _same_type(a.value_type, b.value_type)
    if pa.types.is_string(a) or pa.types.is_large_string(a):
        return pa.types.is_string(b) or pa.types.is_large_string(b)
    return a.equals(b)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _label_list(labels) -> list[str] | None:
    return None if labels is None else [storable(v) for v in labels]


def _visible(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith((".", "_")))


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(_numbers(matrix.ravel(), pa.float32()), matrix.shape[1])


# Columns are built from buffers: pa.array(), pa.table() and Schema.empty_table() import pandas (~0.3 s, to look
# for pandas objects among the values), which a writer of numpy arrays and str lists never needs.
_NUMPY_OF = {pa.float64(): np.float64, pa.float32(): np.float32, pa.int64(): np.int64, pa.int32(): np.int32,
             pa.int16(): np.int16}


def _numbers(values, type_: pa.DataType) -> pa.Array:
    """A numeric column without nulls (a value out of the type's range raises OverflowError)."""
    a = np.ascontiguousarray(np.asarray(values, dtype=_NUMPY_OF[type_]))
    return pa.Array.from_buffers(type_, len(a), [None, pa.py_buffer(a)])


def _validity(values: list) -> pa.Buffer | None:
    """Arrow's validity bitmap of ``values`` (None entries are null); None when nothing is null."""
    valid = np.fromiter((v is not None for v in values), bool, len(values))
    return None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))


def _strings(values: list[str | None]) -> pa.Array:
    """A string column (None: null)."""
    encoded = [b"" if v is None else v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    if offsets[-1] < 2**31:
        return pa.Array.from_buffers(pa.string(), len(values), [_validity(values),
                                     pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))])
    big = pa.Array.from_buffers(pa.large_string(), len(values),
                                [_validity(values), pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])
    return big.cast(pa.string())  # raises as pa.array would: over 2 GiB of text in one column


def _string_lists(values: list[list[str] | None]) -> pa.Array:
    """A list<string> column (None: null)."""
    sizes = np.fromiter((0 if v is None else len(v) for v in values), np.int32, len(values))
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum(sizes, out=offsets[1:])
    flat = _strings([s for v in values if v is not None for s in v])
    return pa.Array.from_buffers(pa.list_(pa.string()), len(values), [_validity(values), pa.py_buffer(offsets)],
                                 children=[flat])


def _table(columns: dict[str, pa.Array], schema: pa.Schema) -> pa.Table:
    """``columns`` as a table of ``schema`` (from_arrays does not check the types itself)."""
    for f in schema:
        if columns[f.name].type != f.type:
            raise TypeError(f"column {f.name}: {columns[f.name].type}, expected {f.type}")
    return pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema)


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """Tables of ``schema`` one after the other (pa.concat_tables imports pyarrow.compute, ~0.1 s)."""
    return pa.Table.from_batches([b for t in tables for b in t.to_batches()], schema=schema)


def _fixed_to_numpy(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    if column.num_chunks == 0 or len(column) == 0:
        return np.zeros((0, dim), np.float32)
    arr = column.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


__all__ = ["EmbeddingStore", "StoreManifest", "StoreCheck", "open_store", "read_manifest", "storable",
           "resolve_path", "shard_schema", "ERROR_SCHEMA", "FORMAT_VERSION"]
