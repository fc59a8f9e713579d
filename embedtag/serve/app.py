"""The FastAPI application behind ``embedtag serve``: see :func:`create_app`."""

from __future__ import annotations

import contextlib
import hmac
import logging
import mimetypes
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedtag.embeddings import audio as A
from embedtag.errors import AudioError, EmbedtagError, IncompatibleError, ParamError
from embedtag.frames import FrameScorer, WindowOutput, iter_frames, make_scorer, pool_embeddings
from embedtag.serve.batcher import Job, MicroBatcher, Overloaded
from embedtag.serve.uploads import UploadError, receive

log = logging.getLogger("embedtag.serve")
STATIC = Path(__file__).resolve().parent / "static"
#: labels drawn in the timeline: those that score highest in any window
TIMELINE_LABELS = 12
K_MAX = 100


# ------------------------------------------------------------------------------------------------ loading
@dataclass
class Service:
    """Everything ``create_app`` loads once at start-up."""

    tagger: FrameScorer
    mode: str  # "head", "run" or "backbone"
    source: str  # what the tagger was loaded from (a directory or a backbone name)
    index: object | None = None
    index_path: str | None = None
    embedder: FrameScorer | None = None  # the index's backbone, pooling and window
    clip_paths: dict | None = None  # clip_id -> audio file, from the index's store
    store_note: str = ""
    clip_id_set: set = field(default_factory=set)


def _load_index(index):
    from embedtag.search import SimilarityIndex

    if isinstance(index, (str, os.PathLike)):
        from embedtag.artifacts import INDEX, read_header

        read_header(index, INDEX, format_version=10**6)  # "X is a head, not a similarity index"
        return SimilarityIndex.load(index), str(index)
    return index, getattr(getattr(index, "manifest", None), "store_path", "") or "(in memory)"


def _index_store(index, index_path: str) -> tuple[dict | None, str]:
    """clip_id -> audio path for the index's clips, read from the store the index was built from (the only place
    audio paths come from), and a note when playback is off."""
    from embedtag.store import open_store

    m = index.manifest
    store_path = getattr(m, "store_path", "") or ""
    if not store_path or not Path(store_path).is_dir():
        return None, f"the index's store ({store_path or 'not recorded'}) is not here: clip playback is off"
    store = open_store(store_path)
    if store.manifest.backbone != m.backbone:
        raise IncompatibleError(f"index {index_path} holds {m.backbone} embeddings but its store {store_path} was "
                                f"made with {store.manifest.backbone}; rebuild the index with `embedtag index build`")
    want = getattr(m, "store_fingerprint", "")
    note = ""
    if want and store.fingerprint() != want:
        note = f"store {store_path} changed since the index was built; rebuild the index to search its new clips"
    table = store.to_pandas(["clip_id", "path"])
    ids = set(index.clip_ids)
    paths = {c: p for c, p in zip(table["clip_id"], table["path"]) if c in ids and p}
    return paths, note


def load_service(head=None, run=None, index=None, model=None, device: str = "auto") -> Service:
    """Load the predictor, the backbone(s) and the index, and check that they belong together.

    Raises IncompatibleError (one line) when a head and an index come from different backbones or weights, or
    ``model`` disagrees with them."""
    from embedtag.embeddings import registry
    from embedtag.embeddings.registry import load_backbone

    if head is not None and run is not None:
        raise ParamError("serve a head or a fine-tuned run, not both")
    predictor, source, mode = None, None, "backbone"
    if head is not None or run is not None:
        from embedtag.artifacts import HEAD, RUN, load_predictor, read_header

        given = head if head is not None else run
        if isinstance(given, (str, os.PathLike)):
            read_header(given, HEAD if head is not None else RUN, format_version=10**6)
            predictor, source = load_predictor(given, device=device), str(given)
        else:
            predictor, source = given, type(given).__name__
        mode = "head" if head is not None else "run"
    idx, index_path = (None, None) if index is None else _load_index(index)
    index_backbone = idx.manifest.backbone if idx is not None else None
    head_backbone = getattr(predictor, "backbone", None) if mode == "head" else None
    model_name = model if isinstance(model, str) or model is None else model.name

    if head_backbone and index_backbone and head_backbone != index_backbone:
        raise IncompatibleError(f"head {source} was trained on {head_backbone} embeddings but index {index_path} "
                                f"holds {index_backbone} embeddings; serve a head and an index of the same --model")
    if head_backbone and idx is not None:
        hw = (getattr(predictor, "extraction", None) or {}).get("weights_sha256")
        iw = (idx.manifest.store_key or {}).get("weights_sha256")
        if hw and iw and hw != iw:
            raise IncompatibleError(f"head {source} and index {index_path} were made with different {head_backbone} "
                                    f"weights (sha256 {hw[:12]}... vs {iw[:12]}...)")
    wanted = head_backbone or (index_backbone if mode != "run" else None)
    if model_name and wanted and model_name != wanted:
        what = f"head {source}" if head_backbone else f"index {index_path}"
        raise IncompatibleError(f"--model {model_name} disagrees with {what}, which needs {wanted}; drop --model")

    backbone = None
    name = wanted or model_name or (None if mode == "run" else registry.DEFAULT_MODEL)
    if name is not None:
        backbone = model if model is not None and not isinstance(model, str) and model.name == name else \
            load_backbone(name, device=device)
    tagger = make_scorer(predictor if predictor is not None else backbone, backbone=backbone, device=device)
    service = Service(tagger, mode, source or backbone.name)
    if idx is not None:
        service.index, service.index_path = idx, index_path
        ib = backbone if backbone is not None and backbone.name == index_backbone else load_backbone(
            index_backbone, device=device)
        want = (idx.manifest.store_key or {}).get("weights_sha256")
        if want and ib.weights_sha256 and ib.weights_sha256 != want:
            raise IncompatibleError(f"the {index_backbone} weights found ({ib.weights_path}) are not those index "
                                    f"{index_path} was built with (sha256 {want[:12]}...)")
        key = idx.manifest.store_key or {}
        from embedtag.embeddings.pipeline import DEFAULT_WINDOW_S

        service.embedder = FrameScorer("backbone", labels=ib.class_names, multi_label=True,
                                       sample_rate=ib.sample_rate, window_s=float(key.get("window_s") or
                                                                                   DEFAULT_WINDOW_S),
                                       pooling=key.get("pooling") or "mean", backbone=ib)
        service.clip_paths, service.store_note = _index_store(idx, index_path)
    # one call before the first request: the first call of a model allocates and selects kernels
    for scorer in {id(s): s for s in (tagger, service.embedder) if s is not None}.values():
        scorer.run_windows([np.zeros(scorer.sample_rate, np.float32)])
    return service


# ------------------------------------------------------------------------------------------------ metrics
class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("embedtag_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("embedtag_request_duration_seconds", "request latency", ["route"],
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60), registry=self.registry)
        self.batch_windows = Histogram("embedtag_batch_windows", "windows per model call",
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batch_jobs = Histogram("embedtag_batch_requests", "requests per model call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.batch_seconds = Histogram("embedtag_batch_duration_seconds", "model call time",
                                       buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=self.registry)
        self.errors = Counter("embedtag_errors", "error answers by kind", ["error"], registry=self.registry)
        self.queue = Gauge("embedtag_queue_depth", "requests waiting for the model", registry=self.registry)
        self.inflight = Gauge("embedtag_requests_in_flight", "requests being served", registry=self.registry)

    def on_batch(self, jobs: int, windows: int, seconds: float) -> None:
        self.batch_jobs.observe(jobs)
        self.batch_windows.observe(windows)
        self.batch_seconds.observe(seconds)


# ------------------------------------------------------------------------------------------------ the app
class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        self.status, self.error, self.detail, self.headers = status, error, detail, headers
        super().__init__(detail)


def _audio_error(exc: AudioError, filename: str, path: Path) -> ApiError:
    reason = exc.reason.replace(str(path), filename)  # libsndfile quotes the file: never show the server's paths
    if reason.startswith("too long"):
        return ApiError(413, "audio_too_long", f"{filename}: {reason.replace('--max-duration-s', 'the limit')}")
    if "empty" in reason or "no audio samples" in reason or "NaN" in reason:
        return ApiError(422, "empty_audio", f"{filename}: {reason}")
    return ApiError(415, "not_audio", f"{filename}: {reason}; send WAV, FLAC, OGG/Opus or MP3")


def _decode(path: Path, filename: str, scorer: FrameScorer, max_duration_s: float):
    """Windows of ``scorer.window_s`` (no overlap) and their durations; ApiError for anything that is not audio
    within the limits."""
    try:
        info = A.audio_info(path)
        if info.duration_s > max_duration_s:
            raise ApiError(413, "audio_too_long", f"{filename}: {info.duration_s:.1f} s of audio is longer than the "
                                                  f"server's limit of {max_duration_s:g} s")
        windows = [w for _, w in iter_frames(path, scorer.sample_rate, scorer.window_s,
                                             max_duration_s=max_duration_s)]
    except AudioError as exc:
        raise _audio_error(exc, filename, path) from None
    return windows, [w.size / scorer.sample_rate for w in windows], info.duration_s


def _round(x) -> float:
    return round(float(x), 6)


def create_app(head=None, run=None, index=None, model=None, max_upload_mb: float = 50, max_duration_s: float = 600,
               token: str | None = None, *, device: str = "auto", max_batch: int = 32, max_wait_ms: float = 5.0,
               max_queue: int = 64, upload_dir: str | os.PathLike | None = None, top_k: int = 10,
               threads: int | None = None):
    """The embedtag web service as a FastAPI app (mount it in another ASGI app, or serve it with uvicorn).

    ``head`` / ``run``: a head or fine-tuned run (a directory or a loaded one) to tag with; neither: the backbone's
    own AudioSet classes (``model``, default the project's default backbone). ``index``: a similarity index (a
    directory or a :class:`~embedtag.search.SimilarityIndex`) for ``/v1/search`` and clip playback. Everything
    loads here, once; a head and an index of different backbones raise IncompatibleError.

    Limits: ``max_upload_mb`` per upload (413, checked while the body streams in), ``max_duration_s`` of audio
    (413), ``max_queue`` requests in flight (503 with Retry-After beyond). ``token``: every ``/v1`` route and
    ``/metrics`` then need ``Authorization: Bearer TOKEN`` (401 otherwise). Micro-batching: ``max_batch`` windows
    per model call, after waiting at most ``max_wait_ms`` for concurrent requests. ``upload_dir``: where uploads
    are spooled (default: the system's temporary folder; each upload's file is removed when its request ends,
    so a killed server leaves no folder behind). ``top_k``: tags returned.
    ``threads``: PyTorch CPU threads for the model (process-wide; default: PyTorch's choice). On a small or busy
    CPU 1 is steadier: OpenMP threads that wait for a core stall every batch."""
    from embedtag import __version__
    from embedtag.serve import schemas as S

    if max_upload_mb <= 0 or max_duration_s <= 0 or max_queue < 1 or max_batch < 1:
        raise ParamError("max_upload_mb, max_duration_s, max_queue and max_batch must be positive")
    if threads is not None:
        if threads < 1:
            raise ParamError(f"threads must be >= 1, got {threads}")
        try:
            import torch

            torch.set_num_threads(int(threads))
        except ImportError:  # a TFLite-only install: nothing to set
            pass
    service = load_service(head, run, index, model, device)
    metrics = Metrics()
    state = {"inflight": 0}
    batcher = MicroBatcher(max_batch=max_batch, max_wait_s=max_wait_ms / 1000, max_queue=max_queue,
                           on_batch=metrics.on_batch, in_flight=lambda: state["inflight"])
    up_dir = Path(tempfile.gettempdir() if upload_dir is None else upload_dir)
    up_dir.mkdir(parents=True, exist_ok=True)
    max_bytes = int(max_upload_mb * 1e6)
    # a few decoding threads, not one per request: dozens of threads decoding at once only fight the model thread
    # for the GIL and the cores, and each holds a decoded clip in memory
    decoders = anyio.CapacityLimiter(max(2, min(8, os.cpu_count() or 2)))
    if service.store_note:
        log.warning(service.store_note)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="embedtag", version=__version__, lifespan=lifespan,
                  description="Audio tagging and similar-sound search with AudioSet-pretrained embeddings. "
                              "Errors answer `{\"error\", \"detail\"}`.")
    app.state.service, app.state.batcher, app.state.metrics, app.state.upload_dir = service, batcher, metrics, up_dir

    # ---------------------------------------------------------------- errors, logging, auth
    def error_response(status: int, error: str, detail: str, headers=None) -> JSONResponse:
        metrics.errors.labels(error).inc()
        return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return error_response(exc.status, exc.error, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        where = ".".join(str(x) for x in errs[0].get("loc", ())) if errs else "request"
        return error_response(422, "invalid_request", f"{where}: {errs[0].get('msg') if errs else 'invalid'}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        names = {404: "not_found", 405: "method_not_allowed"}
        return error_response(exc.status_code, names.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}"[:300])

    def authorise(request: Request) -> None:
        if token is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "unauthorized", "this server needs a token: send 'Authorization: Bearer TOKEN'",
                           {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(401, "unauthorized", "wrong token", {"WWW-Authenticate": "Bearer"})

    @contextlib.asynccontextmanager
    async def admitted():
        if state["inflight"] >= max_queue:
            raise ApiError(503, "overloaded", f"{state['inflight']} requests are in flight (the limit); retry soon",
                           {"Retry-After": "1"})
        state["inflight"] += 1
        metrics.inflight.set(state["inflight"])
        try:
            yield
        finally:
            state["inflight"] -= 1
            metrics.inflight.set(state["inflight"])

    async def run_job(job: Job):
        metrics.queue.set(batcher.depth + 1)
        try:
            return await batcher.submit(job)
        except Overloaded as exc:
            raise ApiError(503, "overloaded", f"{exc}; retry soon", {"Retry-After": "1"}) from None
        except EmbedtagError as exc:
            raise ApiError(422, "cannot_process", str(exc)) from None
        finally:
            metrics.queue.set(batcher.depth)

    async def decoded(request: Request, up, scorer: FrameScorer):
        windows, durations, duration_s = await anyio.to_thread.run_sync(
            _decode, up.path, up.filename, scorer, max_duration_s, limiter=decoders)
        request.state.clip_s = duration_s
        return windows, durations, duration_s

    # ---------------------------------------------------------------- jobs (run on the model thread)
    tagger = service.tagger

    def finish_tag(out: WindowOutput, durations: list[float], duration_s: float) -> dict:
        res = tagger.score_clip(out, durations)
        clip = res.clip_scores
        body = {"duration_s": _round(duration_s),
                "tags": [{"label": t["label"], "score": _round(t["score"])} for t in tagger.top(clip, top_k)],
                "labels": tagger.present(clip), "timeline": None}
        if len(durations) > 1:
            peak = res.frame_scores.max(axis=0)
            keep = np.argsort(-peak, kind="stable")[:TIMELINE_LABELS]
            keep = keep[np.argsort(-clip[keep], kind="stable")]
            body["timeline"] = {"hop_s": tagger.window_s, "window_s": tagger.window_s,
                                "labels": [tagger.labels[j] for j in keep],
                                "scores": [[_round(v) for v in res.frame_scores[:, j]] for j in keep]}
        return body

    def neighbours(results: list[dict]) -> dict:
        return {"results": [{"clip_id": r["clip_id"], "score": _round(r["score"]), "labels": r.get("labels") or []}
                            for r in results]}

    def finish_search(out: WindowOutput, durations: list[float], k: int) -> dict:
        emb = pool_embeddings(out.embeddings, durations, service.embedder.pooling)
        return neighbours(service.index.search(emb[None, :], k)[0])

    # ---------------------------------------------------------------- routes
    audio_body = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
    errors = {c: {"model": S.ErrorBody} for c in (401, 413, 415, 422, 503)}
    v1 = [Depends(authorise)]

    @app.post("/v1/tag", response_model=S.TagResponse, dependencies=v1, openapi_extra=audio_body, tags=["tagging"],
              responses=errors)
    async def tag(request: Request):
        """Tag an audio file: multipart field `file`, or the raw audio as the body. `tags`: the best labels
        with scores; `labels`: those at or above their threshold; `timeline`: per-window scores of the best
        labels when the audio is longer than one window."""
        async with admitted(), receive(request, up_dir, max_bytes) as up:
            windows, durations, duration_s = await decoded(request, up, tagger)
            return await run_job(Job(tagger, windows, lambda out: finish_tag(out, durations, duration_s)))

    @app.post("/v1/search", response_model=S.SearchResponse, dependencies=v1, openapi_extra=audio_body,
              tags=["search"], responses={**errors, 404: {"model": S.ErrorBody}})
    async def search(request: Request, k: int = Query(10, ge=1, le=K_MAX, description="neighbours to return"),
                     clip_id: str | None = Query(None, description="a clip of the index instead of an upload")):
        """Similar sounds from the index, nearest first: for an uploaded file (as in `/v1/tag`), or for a stored
        clip (`?clip_id=`, the clip itself left out)."""
        if service.index is None:
            raise ApiError(404, "no_index", "this server has no similarity index (start it with --index DIR)")
        async with admitted():
            if clip_id is not None:
                if clip_id not in service.clip_id_set:
                    raise ApiError(404, "unknown_clip", f"no clip {clip_id!r} in the index")
                return neighbours((await run_in_threadpool(service.index.search_ids, [clip_id], k))[0])
            async with receive(request, up_dir, max_bytes) as up:
                windows, durations, _ = await decoded(request, up, service.embedder)
                return await run_job(Job(service.embedder, windows, lambda out: finish_search(out, durations, k)))

    @app.get("/v1/clips/{clip_id:path}/audio", dependencies=v1, tags=["search"],
             responses={200: {"content": {"audio/*": {}}}, 404: {"model": S.ErrorBody}})
    async def clip_audio(clip_id: str):
        """The audio of a clip of the index, for playback (looked up in the index's store by clip id)."""
        if service.index is None:
            raise ApiError(404, "no_index", "this server has no similarity index")
        path = (service.clip_paths or {}).get(clip_id)
        if path is None:
            raise ApiError(404, "unknown_clip", f"no clip {clip_id!r} in the index" if clip_id not in
                           service.clip_id_set else f"the audio of {clip_id!r} is not available: {service.store_note}")
        if not Path(path).is_file():
            raise ApiError(404, "audio_missing", f"the audio file of clip {clip_id!r} is gone from the server")
        media = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)

    @app.get("/v1/info", response_model=S.InfoResponse, dependencies=v1, tags=["service"])
    async def info():
        """What this server runs: backbone, weights checksum, labels and thresholds, index size, limits."""
        b = tagger.backbone
        idx = service.index
        return {"mode": service.mode, "source": service.source, "backbone": tagger.backbone_name,
                "weights_sha256": b.weights_sha256 if b is not None else None,
                "device": getattr(b, "device", None) or getattr(tagger.predictor, "device", None),
                "labels": tagger.labels, "multi_label": tagger.multi_label,
                "thresholds": [_round(t) for t in tagger.thresholds], "window_s": tagger.window_s,
                "pooling": tagger.pooling,
                "index": None if idx is None else {"clips": len(idx.clip_ids), "backbone": idx.manifest.backbone,
                                                   "path": service.index_path,
                                                   "playback": service.clip_paths is not None},
                "limits": {"max_upload_mb": max_upload_mb, "max_duration_s": max_duration_s,
                           "max_queue": max_queue, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                           "auth": token is not None},
                "versions": _versions(__version__)}

    @app.get("/healthz", tags=["service"])
    async def healthz():
        """Liveness: 200 once everything is loaded."""
        return {"status": "ok"}

    @app.get("/metrics", dependencies=[Depends(authorise)], tags=["service"], response_class=Response)
    async def prom():
        """Prometheus text: requests, latency, batch sizes, errors by kind, queue depth."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(_LogAndCount, metrics=metrics)
    service.clip_id_set = set(service.index.clip_ids) if service.index is not None else set()
    return app


class _LogAndCount:
    """One log line and the request metrics per HTTP request (a plain ASGI middleware: no extra task or stream
    per request, unlike ``@app.middleware``)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]
        state = scope.setdefault("state", {})

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            took = time.perf_counter() - start
            path = scope.get("path", "")
            route = getattr(scope.get("route"), "path", None) or ("/static" if path.startswith("/static") else
                                                                   "unmatched")
            self.metrics.requests.labels(scope.get("method", ""), route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(took)
            clip = state.get("clip_s")
            log.info("%s %s %d %.1f ms%s", scope.get("method", ""), path, status[0], took * 1000,
                     f" clip {clip:.2f} s" if clip is not None else "")


def _versions(embedtag_version: str) -> dict:
    import fastapi

    out = {"embedtag": embedtag_version, "python": platform.python_version(), "fastapi": fastapi.__version__,
           "numpy": np.__version__}
    for mod in ("torch", "faiss"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001, S110 - not installed, or no version attribute
            pass
    return out
