"""Audio files -> clip embeddings: ``encode`` (in memory) and ``extract`` (into a resumable embedding store).

Decoding (soundfile + soxr, both release the GIL) runs in a thread pool a few clips ahead of the model, so it
overlaps with batched inference. Each clip is cut into windows of ``window_s`` seconds (the last one shorter);
windows shorter than the backbone's minimum are zero-padded; window embeddings are pooled per clip (``mean``
weighted by window duration, ``max``, or ``meanmax`` = both concatenated). A clip longer than
``STREAM_THRESHOLD_WINDOWS`` windows is decoded window by window, so memory is bounded by the window and the
batch, never by the file.

``extract`` writes one Parquet shard per batch, atomically, under the store's lock: a crash or Ctrl-C loses at
most the batch in flight, and a rerun skips every clip already stored and tries failed ones again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedtag._progress import progress_bar as _progress_bar
from embedtag.embeddings import audio as A
from embedtag.errors import AudioError, EmbedtagError, ParamError
from embedtag.inputs import ClipSource, read_label_table, resolve_sources, safe_text

POOLINGS = ("mean", "max", "meanmax")
DEFAULT_WINDOW_S = 10.0
#: clips with more windows than this are streamed instead of decoded whole
STREAM_THRESHOLD_WINDOWS = 6


@dataclass
class ExtractSummary:
    store: str
    backbone: str
    device: str
    n_inputs: int = 0
    n_skipped: int = 0
    n_stored: int = 0
    n_failed: int = 0
    #: clips recorded as failed by an earlier run and tried again by this one
    n_retried: int = 0
    #: inputs of this run still not in the store at the end (failed now or earlier): the CLI exits 3 when > 0
    n_unstored: int = 0
    #: clips stored earlier whose labels this run attached or changed
    n_relabelled: int = 0
    audio_s: float = 0.0
    elapsed_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: engine="ray": where the work ran (``ray_engine.RayRunStats``: nodes, actors, retries absorbed)
    ray: object | None = None

    @property
    def clips_per_s(self) -> float:
        return self.n_stored / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio embedded per second of wall time."""
        return self.audio_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("store", "backbone", "device", "n_inputs", "n_skipped", "n_stored",
                                            "n_failed", "n_retried", "n_unstored", "n_relabelled", "audio_s",
                                            "elapsed_s")}
        d.update(clips_per_s=self.clips_per_s, realtime_factor=self.realtime_factor,
                 failures=[{"clip_id": c, "reason": r} for c, r in self.failures])
        return d


# ----------------------------------------------------------------------------------------------- inputs
#: inputs are resolved by :mod:`embedtag.inputs`; these names are kept for compatibility
collect_sources = resolve_sources
read_labels_csv = read_label_table


# ----------------------------------------------------------------------------------------------- engine
@dataclass
class _Decoded:
    source: ClipSource
    windows: Iterable[np.ndarray]
    duration_s: float
    sample_rate: int
    channels: int
    levels: A.LevelMeter = field(default_factory=A.LevelMeter)  # filled as the windows are decoded


def _decode(src: ClipSource, target_sr: int, window_s: float, max_duration_s: float | None) -> _Decoded:
    window = int(round(window_s * target_sr))
    if src.samples is not None:
        x = A.resample(A.to_mono(np.asarray(src.samples, np.float32)), src.sample_rate or target_sr, target_sr)
        if x.size == 0:
            raise AudioError(src.clip_id, "contains no audio samples")
        d = _Decoded(src, _split(x, window), x.size / target_sr, src.sample_rate or target_sr, 1)
        d.levels.update(x)
        return d
    x, info = A.read_audio(src.path, target_sr, max_duration_s=max_duration_s,
                           whole_up_to_s=STREAM_THRESHOLD_WINDOWS * window_s)
    if x is not None:
        d = _Decoded(src, _split(x, window), info.duration_s, info.sample_rate, info.channels)
        d.levels.update(x)
        return d
    d = _Decoded(src, [], info.duration_s, info.sample_rate, info.channels)
    d.windows = _tracked(A.iter_windows(src.path, target_sr, window_s, max_duration_s=max_duration_s), d.levels)
    return d


def _split(x: np.ndarray, window: int) -> list[np.ndarray]:
    return [x[i:i + window] for i in range(0, x.size, window)] or [x]


def _tracked(windows: Iterator[np.ndarray], levels: A.LevelMeter) -> Iterator[np.ndarray]:
    for w in windows:
        levels.update(w)
        yield w


class _Acc:
    """Running pooled statistics of one clip's windows."""

    __slots__ = ("decoded", "sum_e", "max_e", "sum_s", "max_s", "weight", "n", "open")

    def __init__(self, decoded: _Decoded):
        self.decoded = decoded
        self.sum_e = self.max_e = self.sum_s = self.max_s = None
        self.weight = 0.0
        self.n = 0
        self.open = 0  # windows queued but not yet embedded

    def add(self, emb: np.ndarray, scores: np.ndarray | None, w: float) -> None:
        if self.sum_e is None:
            self.sum_e, self.max_e = emb * w, emb.copy()
            if scores is not None:
                self.sum_s, self.max_s = scores * w, scores.copy()
        else:
            self.sum_e += emb * w
            np.maximum(self.max_e, emb, out=self.max_e)
            if scores is not None:
                self.sum_s += scores * w
                np.maximum(self.max_s, scores, out=self.max_s)
        self.weight += w
        self.n += 1
        self.open -= 1

    def result(self, pooling: str) -> tuple[np.ndarray, np.ndarray | None]:
        mean_e = self.sum_e / self.weight
        emb = {"mean": mean_e, "max": self.max_e, "meanmax": None}[pooling]
        if emb is None:
            emb = np.concatenate([mean_e, self.max_e])
        scores = None
        if self.sum_s is not None:
            scores = self.sum_s / self.weight if pooling == "mean" else self.max_s
        return emb.astype(np.float32), None if scores is None else scores.astype(np.float32)


def _record(acc: _Acc, pooling: str) -> dict:
    d = acc.decoded
    emb, scores = acc.result(pooling)
    return {"clip_id": d.source.clip_id, "path": safe_text(d.source.path),  # valid UTF-8 for the store
            "duration_s": d.duration_s,
            "sample_rate": d.sample_rate, "channels": d.channels, "n_windows": acc.n, "peak": d.levels.peak,
            "rms_dbfs": d.levels.rms_dbfs, "embedding": emb,
            "audioset_scores": scores, "labels": d.source.labels}


def run_settings(backbone, *, pooling: str, batch_size: int | None, window_s: float | None) -> tuple[int, float]:
    """The batch size and window length a run uses (None or 0: the backbone's batch, ``DEFAULT_WINDOW_S``), checked
    against ``backbone``; ParamError otherwise. Shared by both engines and by :func:`extract`."""
    if pooling not in POOLINGS:
        raise ParamError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
    batch_size = int(batch_size or backbone.default_batch_size)
    if batch_size < 1:
        raise ParamError(f"batch_size must be >= 1, got {batch_size}")
    window_s = float(window_s or DEFAULT_WINDOW_S)
    if window_s * backbone.sample_rate < 1:
        raise ParamError(f"window_s={window_s:g} is shorter than one sample at {backbone.sample_rate} Hz")
    return batch_size, window_s


class Decoding:
    """Clips decoded ahead of the model, in input order: ``workers`` threads (0: in the caller's thread, when asked
    for) decode up to ``ahead`` clips beyond the one being embedded. It can start before the model is loaded
    (:func:`extract` does, for a model given by name): loading PyTorch or TensorFlow keeps one core busy for
    ~2-3 s, in which the decoding threads (soundfile and soxr release the GIL) get the first clips ready."""

    def __init__(self, sources: Iterable[ClipSource], sample_rate: int, *, workers: int, ahead: int,
                 window_s: float, max_duration_s: float | None):
        self.sample_rate, self.window_s, self.max_duration_s = sample_rate, window_s, max_duration_s
        self.ahead = ahead
        self.queued: list[tuple[ClipSource, Future]] = []
        self._it = iter(sources)
        self._pool = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embedtag-decode") if workers
                      else _InlineExecutor())
        self.fill()

    def fill(self) -> None:
        while len(self.queued) < self.ahead:
            try:
                s = next(self._it)
            except StopIteration:
                return
            self.queued.append((s, self._pool.submit(_decode, s, self.sample_rate, self.window_s,
                                                     self.max_duration_s)))

    def next(self) -> tuple[ClipSource, Future] | None:
        """The next clip and its decoding (None after the last); queues another behind it."""
        if not self.queued:
            return None
        item = self.queued.pop(0)
        self.fill()
        return item

    def close(self) -> None:
        """Stop (again: nothing): clips not yet started are dropped, the threads finish the ones they are on."""
        for _, f in self.queued:
            f.cancel()
        self.queued.clear()
        self._it = iter(())
        self._pool.shutdown(wait=True)


def run(backbone, sources: Sequence[ClipSource], *, on_batch: Callable[[list[dict]], None],
        on_error: Callable[[ClipSource, EmbedtagError], None], batch_size: int | None = None,
        workers: int | None = None, pooling: str = "mean", window_s: float | None = None,
        max_duration_s: float | None = A.DEFAULT_MAX_DURATION_S,
        on_progress: Callable[[int], None] | None = None, decoding: Decoding | None = None) -> None:
    """Embed ``sources`` with ``backbone``; hand finished clips to ``on_batch`` once per model batch.

    Decoding runs in ``workers`` threads, up to two batches of clips ahead of the model, so that the next batch
    is decoded while the model runs (memory: at most ``2 * batch_size`` clips of ``STREAM_THRESHOLD_WINDOWS``
    windows; longer clips are streamed). The whole job runs inside ``backbone.cpu_job()`` (how the model uses the
    CPU beside the decoding threads). ``decoding``: one started earlier on ``sources`` (or on a list they are in,
    in the same order: its clips not in ``sources`` are passed over); run closes it.
    """
    batch_size, window_s = run_settings(backbone, pooling=pooling, batch_size=batch_size, window_s=window_s)
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise EmbedtagError(f"workers must be >= 0, got {workers}")
    prefetch = max(4 * workers, 2 * batch_size)
    sr, min_n = backbone.sample_rate, backbone.min_samples
    if backbone.warmup_min_inputs is not None and len(sources) >= backbone.warmup_min_inputs:
        backbone.warmup()  # only where it pays: a smaller job spends more on the warm-up than it saves

    windows: list[np.ndarray] = []
    owners: list[tuple[_Acc, float]] = []
    waiting: list[_Acc] = []  # clips in the current batch, in input order

    def flush() -> None:
        if windows:
            out = backbone.embed(windows)
            for j, (acc, w) in enumerate(owners):
                acc.add(out.embeddings[j], None if out.scores is None else out.scores[j], w)
            windows.clear()
            owners.clear()
        done = [a for a in waiting if a.open == 0 and a.n > 0 and a is not streaming[0]]
        if done:
            on_batch([_record(a, pooling) for a in done])
            if on_progress:
                on_progress(len(done))
            waiting[:] = [a for a in waiting if a not in done]

    streaming: list[_Acc | None] = [None]  # the clip whose windows are still being read
    batch_now = min(batch_size, backbone.first_batch_size or batch_size)  # ramps up to batch_size (see Backbone)
    wanted = None
    if decoding is None:
        decoding = Decoding(sources, sr, workers=workers, ahead=prefetch, window_s=window_s,
                            max_duration_s=max_duration_s)
    elif decoding.sample_rate != sr or decoding.window_s != window_s or decoding.max_duration_s != max_duration_s:
        decoding.close()
        raise ParamError(f"decoding was started at {decoding.sample_rate} Hz, {decoding.window_s:g} s windows, "
                         f"max {decoding.max_duration_s} s; {backbone.name} needs {sr} Hz, {window_s:g} s, "
                         f"max {max_duration_s} s")
    else:
        decoding.ahead = max(decoding.ahead, prefetch)
        wanted = {s.clip_id for s in sources}
    try:
        with backbone.cpu_job():
            while (item := decoding.next()) is not None:
                src, fut = item
                if wanted is not None and src.clip_id not in wanted:
                    continue  # stored meanwhile by another writer (see extract)
                try:
                    decoded = fut.result()
                except EmbedtagError as exc:
                    on_error(src, exc)
                    if on_progress:
                        on_progress(1)
                    continue
                except Exception as exc:  # an unexpected decoder failure is still one bad file, not a crash
                    on_error(src, AudioError(src.path or src.clip_id, f"{type(exc).__name__}: {exc}"))
                    if on_progress:
                        on_progress(1)
                    continue
                acc = _Acc(decoded)
                waiting.append(acc)
                streaming[0] = acc
                try:
                    for win in decoded.windows:
                        acc.open += 1
                        windows.append(A.pad_to(win, min_n))
                        owners.append((acc, win.size / sr))
                        if len(windows) >= batch_now:
                            flush()
                            batch_now = min(batch_size, 2 * batch_now)
                except EmbedtagError as exc:  # a stream that breaks half-way: drop the clip, record why
                    waiting.remove(acc)
                    keep = [(i, o) for i, o in enumerate(owners) if o[0] is not acc]
                    windows[:] = [windows[i] for i, _ in keep]
                    owners[:] = [o for _, o in keep]
                    streaming[0] = None
                    on_error(src, exc)
                    if on_progress:
                        on_progress(1)
                    continue
                streaming[0] = None
            flush()
    finally:
        decoding.close()


class _InlineExecutor:
    """``workers=0``: decode in the calling thread (no overlap, no thread contention)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def shutdown(self, wait: bool = True) -> None:
        pass

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # delivered through .result(), like a thread pool's future
            fut.set_exception(exc)
        return fut


def default_workers() -> int:
    """Decoding threads: one core is left to the model. On 2 cores one thread is fastest (measured: more threads
    only add GIL contention, and the model's own threads need the other core)."""
    from embedtag.embeddings.backbones.base import cpu_cores

    return max(1, min(4, cpu_cores() - 1))


# ----------------------------------------------------------------------------------------------- API
def _load(model, weights, device):
    from embedtag.embeddings.backbones.base import Backbone
    from embedtag.embeddings.registry import DEFAULT_MODEL, load_backbone

    if isinstance(model, Backbone):
        return model
    return load_backbone(model or DEFAULT_MODEL, weights=weights, device=device)


def encode(inputs: str | os.PathLike | np.ndarray | Sequence, model=None, *, sample_rate: int | None = None,
           batch_size: int | None = None, device: str = "auto", weights=None, workers: int | None = None,
           pooling: str = "mean", window_s: float | None = None, return_scores: bool = False,
           progress: bool = False, on_error: Callable[[int, EmbedtagError], None] | None = None):
    """Embed audio files or arrays in memory; one call does decoding, batching, device placement and progress.

    ``inputs``: a path, an array, or a sequence of them (arrays are at ``sample_rate``, default the backbone's).
    ``model``: a backbone name (see ``embedtag models``; default ``registry.DEFAULT_MODEL``, efficientat-mn04) or a
    loaded backbone. Returns ``(n, dim)`` float32 in input order (and the ``(n, n_classes)`` AudioSet scores with
    ``return_scores=True``). A file that cannot be decoded raises :class:`~embedtag.errors.AudioError` naming it;
    with ``on_error(i, exc)`` it is reported there instead, its row is NaN, and the other inputs go on.
    """
    backbone = _load(model, weights, device)
    single = isinstance(inputs, (str, os.PathLike)) or (isinstance(inputs, np.ndarray) and inputs.ndim == 1)
    items = [inputs] if single else list(inputs)
    sources = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            sources.append(ClipSource(str(i), samples=item, sample_rate=sample_rate or backbone.sample_rate))
        else:
            sources.append(ClipSource(str(i), str(item)))
    results: dict[str, dict] = {}

    def fail(src: ClipSource, exc: EmbedtagError) -> None:
        if on_error is None:
            raise exc
        on_error(int(src.clip_id), exc)

    with _progress_bar(progress, len(sources), f"embedding with {backbone.name}") as advance:
        run(backbone, sources, on_batch=lambda recs: results.update({r["clip_id"]: r for r in recs}),
            on_error=fail, batch_size=batch_size, workers=workers, pooling=pooling, window_s=window_s,
            on_progress=advance)
    dim = backbone.embedding_dim * (2 if pooling == "meanmax" else 1)
    n_cls = len(backbone.class_names)

    def column(key: str, width: int) -> np.ndarray:
        if not sources:
            return np.zeros((0, width), np.float32)
        missing = np.full(width, np.nan, np.float32)  # an input that failed (reported through on_error)
        return np.stack([results[s.clip_id][key] if s.clip_id in results else missing for s in sources])

    emb = column("embedding", dim)
    if not return_scores:
        return emb
    return emb, column("audioset_scores", n_cls)


def extract(src, out: str | os.PathLike, model=None, *, labels=None, weights=None, device: str = "auto",
            batch_size: int | None = None, workers: int | None = None, pooling: str = "mean",
            window_s: float | None = None, scores: bool = True, strict: bool = False,
            max_duration_s: float | None = A.DEFAULT_MAX_DURATION_S, limit: int | None = None,
            allow_outside_root: bool = False, progress: bool = True, engine: str = "local",
            ray_address: str | None = None, actors: int | None = None, gpus_per_actor: float | None = None,
            cpus_per_decoder: float | None = None) -> ExtractSummary:
    """Embed ``src`` (see :func:`embedtag.inputs.resolve_sources`: files, folders, CSVs, dataset layouts) into the
    embedding store at ``out``; resumable. ``limit``: only the first N inputs. ``allow_outside_root``: accept CSV
    rows that point outside the CSV's dataset folder.

    Clips already stored are skipped; clips recorded as failed are tried again (a fixed file gets stored, one
    that fails again stays in the errors table). Unreadable files are recorded in the store's errors table and
    the run goes on, unless ``strict`` (then the first one raises AudioError). Labels of this run's inputs
    (``labels`` or a dataset's labels.csv) are attached to clips stored earlier too. Invalid options raise
    ParamError before anything is read or written. The store's lock is held while writing: a second process
    writing the same store waits up to ``embedtag.store.LOCK_TIMEOUT_S`` seconds, then gets an ArtifactError.
    ``summary.n_unstored`` counts this run's inputs still not stored at the end (the CLI exits 3 when > 0).
    ``scores=False`` on a store that keeps AudioSet scores keeps writing them (the store's layout wins).

    ``engine="ray"`` runs decoding and the model on a Ray cluster (:mod:`embedtag.embeddings.ray_engine`;
    ``ray_address`` ``"auto"`` or ``HOST:PORT``, ``actors``, ``gpus_per_actor``, ``cpus_per_decoder``) and writes
    the same store; the other arguments mean the same, except ``device`` and ``workers`` (actors use CUDA when
    ``gpus_per_actor`` > 0; decoding runs on the cluster's CPUs).
    """
    check_extract_options(batch_size=batch_size, workers=workers, pooling=pooling, window_s=window_s,
                          max_duration_s=max_duration_s, limit=limit)
    engine_run = _engine(engine, ray_address=ray_address, actors=actors, gpus_per_actor=gpus_per_actor,
                         cpus_per_decoder=cpus_per_decoder, weights=weights)
    # clip ids come back valid UTF-8 (a non-UTF-8 file name is escaped); paths stay the real ones
    sources = resolve_sources(src, labels, exclude=[out], allow_outside_root=allow_outside_root, limit=limit)
    decoding = _decode_while_loading(model, sources, out, engine=engine, workers=workers, batch_size=batch_size,
                                     window_s=window_s, max_duration_s=max_duration_s)
    try:
        # with Ray the driver's copy only names the model (the actors load their own): keep it off the GPUs
        backbone = _load(model, weights, "cpu" if engine == "ray" else device)
        _, window_s = run_settings(backbone, pooling=pooling, batch_size=batch_size, window_s=window_s)
        if decoding is not None and decoding.sample_rate != backbone.sample_rate:
            decoding.close()  # a fallback backbone at another rate (none registered does this)
            decoding = None
        return _extract_into_store(backbone, sources, out, decoding, engine_run, window_s=window_s, pooling=pooling,
                                   scores=scores, strict=strict, batch_size=batch_size, workers=workers,
                                   max_duration_s=max_duration_s, progress=progress)
    finally:
        if decoding is not None:
            decoding.close()  # run closed it already, unless the job never started


def _decode_while_loading(model, sources: Sequence[ClipSource], out, *, engine: str, workers: int | None,
                          batch_size: int | None, window_s: float | None,
                          max_duration_s: float | None) -> Decoding | None:
    """Start decoding the first clips before a model given by name is loaded (see :class:`Decoding`): into a new
    store only (a rerun first needs the store to know which clips are left), on this machine, in threads."""
    from embedtag.embeddings.backbones.base import Backbone
    from embedtag.embeddings.registry import DEFAULT_MODEL, get_spec
    from embedtag.store import MANIFEST_NAME

    if isinstance(model, Backbone) or engine != "local" or workers == 0 or not sources or \
            (Path(out) / MANIFEST_NAME).exists():
        return None
    spec = get_spec(model or DEFAULT_MODEL)
    return Decoding(sources, spec.sample_rate, workers=default_workers() if workers is None else workers,
                    ahead=2 * (batch_size or 32), window_s=float(window_s or DEFAULT_WINDOW_S),
                    max_duration_s=max_duration_s)


def _extract_into_store(backbone, sources, out, decoding, engine_run, *, window_s, pooling, scores, strict,
                        batch_size, workers, max_duration_s, progress) -> ExtractSummary:
    from embedtag.store import EmbeddingStore, StoreManifest

    manifest = StoreManifest(
        backbone=backbone.name, embedding_dim=backbone.embedding_dim * (2 if pooling == "meanmax" else 1),
        sample_rate=backbone.sample_rate, pooling=pooling, window_s=window_s,
        weights_sha256=backbone.weights_sha256, class_names=list(backbone.class_names) if scores else [])
    store = EmbeddingStore.create(out, manifest)
    keep_scores = store.manifest.has_scores
    summary = ExtractSummary(store=str(out), backbone=backbone.name, device=backbone.device,
                             n_inputs=len(sources))

    def on_batch(records: list[dict]) -> None:
        if not keep_scores:
            for r in records:
                r.pop("audioset_scores", None)
        store.append(records)
        summary.n_stored += len(records)
        summary.audio_s += sum(r["duration_s"] for r in records)

    def on_error(s: ClipSource, exc: EmbedtagError) -> None:
        reason = getattr(exc, "reason", None) or str(exc)
        store.add_errors([{"clip_id": s.clip_id, "path": safe_text(s.path), "reason": safe_text(reason),
                           "error_type": type(exc).__name__}])
        summary.n_failed += 1
        summary.failures.append((s.clip_id, safe_text(reason)))
        if strict:
            raise exc

    start = time.perf_counter()
    try:
        with store.writing():  # under the lock: what is stored now, not before another writer finished
            stored, failed = store.stored_ids(), store.failed_ids()
            todo = [s for s in sources if s.clip_id not in stored]
            summary.n_skipped = len(sources) - len(todo)
            summary.n_retried = sum(s.clip_id in failed for s in todo)
            with _progress_bar(progress, len(todo), f"{backbone.name} → {Path(out).name}") as advance:
                extra = {} if decoding is None else {"decoding": decoding}
                summary.ray = engine_run(backbone, todo, on_batch=on_batch, on_error=on_error,
                                         batch_size=batch_size, workers=workers, pooling=pooling,
                                         window_s=window_s, max_duration_s=max_duration_s, on_progress=advance,
                                         **extra)
            summary.n_relabelled = _update_labels(store, sources)
    finally:
        summary.elapsed_s = time.perf_counter() - start
    stored = store.stored_ids()
    summary.n_unstored = sum(s.clip_id not in stored for s in sources)
    return summary


def check_extract_options(*, batch_size=None, workers=None, pooling="mean", window_s=None, max_duration_s=None,
                          limit=None) -> None:
    """ParamError for an option of :func:`extract` out of range, before any input is read or store created
    (a typo must not mark a whole dataset as failed)."""
    def bad(name, value, expected):
        raise ParamError(f"{name}={value!r}: expected {expected}")

    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def finite_number(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)

    if pooling not in POOLINGS:
        bad("pooling", pooling, f"one of {', '.join(POOLINGS)}")
    if batch_size is not None and not (is_int(batch_size) and batch_size >= 1):
        bad("batch_size", batch_size, "an integer >= 1")
    if workers is not None and not (is_int(workers) and workers >= 0):
        bad("workers", workers, "an integer >= 0 (0 decodes in the main thread)")
    if window_s is not None and not (finite_number(window_s) and window_s > 0):
        bad("window_s", window_s, "a finite number of seconds > 0")
    if max_duration_s is not None and not (finite_number(max_duration_s) and max_duration_s > 0):
        bad("max_duration_s", max_duration_s, "a finite number of seconds > 0, or None for no limit")
    if limit is not None and not (is_int(limit) and limit >= 0):
        bad("limit", limit, "an integer >= 0")


def _update_labels(store, sources: Sequence[ClipSource]) -> int:
    """Give clips stored earlier the labels this run's inputs carry (a rerun with ``--labels``)."""
    given = {s.clip_id: list(s.labels) for s in sources if s.labels is not None}
    return store.set_labels(given, ignore_missing=True) if given else 0


def _engine(engine: str, *, weights=None, **ray_options) -> Callable:
    """``run`` for ``engine="local"``; ``ray_engine.run_ray`` bound to the Ray options for ``engine="ray"``."""
    given = {k: v for k, v in ray_options.items() if v is not None}
    if engine == "local":
        if given:
            raise ParamError(f"{', '.join(sorted(given))} only apply to engine='ray' (--engine ray)")
        return run
    if engine != "ray":
        raise ParamError(f"unknown engine {engine!r}; use local or ray")
    import functools

    from embedtag.embeddings import ray_engine

    ray_engine.import_ray()  # "pip install 'embedtag[ray]'" before any model is loaded or store created
    ray_engine.check_address(given.get("ray_address"))
    return functools.partial(ray_engine.run_ray, weights=weights, **given)
