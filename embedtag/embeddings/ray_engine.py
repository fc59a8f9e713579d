"""Scale-out extraction on Ray Data: ``extract(..., engine="ray")`` / ``embedtag extract --engine ray``.

:func:`run_ray` has the contract of :func:`embedtag.embeddings.pipeline.run` (same callbacks, same records), so
``extract`` writes the same embedding store whichever engine runs. The job is a Ray Data pipeline::

    clip list (driver) --from_items--> decode (CPU tasks) --windows--> EmbedActor pool (one model each) --> driver

- **decode** runs as Ray tasks (``cpus_per_decoder`` CPUs each) with the local engine's decoder
  (:func:`pipeline._decode`: soundfile + soxr, windows of ``window_s``, long files streamed window by window), and
  emits one row per window (already padded to the backbone's minimum), one ``meta`` row per clip (duration, rate,
  channels, level sums, window count) or one ``error`` row (the reason) for a file that cannot be decoded;
- **embed** runs in an actor pool (``ActorPoolStrategy(size=actors)``, ``num_gpus=gpus_per_actor``): each actor
  loads the backbone once and embeds batches of ``batch_size`` windows; meta and error rows pass through;
- the **driver** gathers the windows of each clip, pools them in window order with the local engine's ``_Acc`` and
  ``_record`` (so embeddings equal the local engine's), and hands records to ``on_batch`` and failures to
  ``on_error``. Only the driver writes the store, and it keys every window by (clip, window) and closes a clip once:
  when Ray re-runs a task after a worker died, a re-emitted row is dropped, so every clip lands exactly once.

Fault tolerance is Ray Data's own: a decode task whose worker dies is re-run and a dead actor is restarted with
its pending batches retried (Ray Data's defaults: ``max_retries``, ``max_restarts`` and ``max_task_retries`` are
unlimited; setting them through ``map_batches`` is deprecated since Ray 2.60).

Audio never travels back to the driver: the actors drop the samples and return embeddings. Workers need embedtag
installed (same version) and the backbone's weights reachable (the driver's weights path if it exists on that node,
else the node's own mirror/cache; the sha256 is checked against the driver's).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedtag.embeddings import audio as A
from embedtag.embeddings.pipeline import ClipSource, _Acc, _decode, _Decoded, _record, run_settings
from embedtag.errors import AudioError, EmbedtagError, ParamError, WeightsError

INSTALL_HINT = "pip install 'embedtag[ray]'"
#: object store of a local Ray instance started by ``--ray-address auto`` (a cluster's own setting wins otherwise)
LOCAL_OBJECT_STORE_BYTES = 1 << 30
#: clips per decode task: enough to amortise a task's scheduling, few enough to spread a small job over the cluster
DECODE_CLIPS_PER_TASK = 4
#: input blocks at most: a 2M-clip job gets ~200 clips per decode task instead of 250,000 tiny objects
MAX_INPUT_BLOCKS = 10_000
#: CPUs each embedding actor reserves (its model's threads; on GPU, feeding the device)
ACTOR_CPUS = 1.0
#: memory each embedding actor reserves (a model and a batch of windows). Also keeps decoding out of the actors:
#: Ray Data fuses a task stage into the next actor stage when their resource requests are identical.
ACTOR_MEMORY_BYTES = 1 << 30
#: how long a job waits for its actor pool to start (model loads; an autoscaler adding nodes)
ACTOR_START_TIMEOUT_S = 900
#: environment the workers need to find weights and stay offline like the driver
_PASS_ENV = ("EMBEDTAG_WEIGHTS_DIR", "EMBEDTAG_HOME", "EMBEDTAG_OFFLINE", "TF_CPP_MIN_LOG_LEVEL")

WINDOW, META, ERROR = 0, 1, 2


@dataclass
class RayRunStats:
    """Where the work ran: node ids of the decode tasks and embedding actors, and retries absorbed."""

    nodes: list[str] = field(default_factory=list)  # alive nodes when the job started
    actors: int = 0
    gpus_per_actor: float = 0.0
    decode_nodes: Counter = field(default_factory=Counter)  # node id -> clips decoded there
    embed_nodes: Counter = field(default_factory=Counter)  # node id -> windows embedded there
    embed_actors: Counter = field(default_factory=Counter)  # (node id, pid) -> windows embedded by that process
    decoded_in_actor: int = 0  # clips decoded inside an actor (would mean Ray fused decoding into the pool)
    duplicates: int = 0  # rows dropped because their clip was already closed (a retried task's re-emission)

    def describe(self) -> str:
        return (f"{len(self.nodes)} node(s), {self.actors} actor(s)"
                f"{f' x {self.gpus_per_actor:g} GPU' if self.gpus_per_actor else ' on CPU'}; decoded on "
                f"{len(self.decode_nodes)} node(s), embedded on "
                f"{len(self.embed_nodes)} node(s) by {len(self.embed_actors)} actor process(es)"
                f"{f', {self.duplicates} re-delivered rows dropped' if self.duplicates else ''}")


# ----------------------------------------------------------------------------------------------- cluster
def import_ray():
    """``ray`` with Ray Data, or an EmbedtagError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise EmbedtagError(f"--engine ray needs Ray Data, which is not installed ({exc.name or exc}); "
                            f"install it with: {INSTALL_HINT}") from None
    return ray


def connect(address: str | None = "auto") -> bool:
    """Join the Ray cluster at ``address`` (``auto``: the one ``ray start`` or RAY_ADDRESS names, else start a
    local one). Returns True when this call made the connection, False when the process was already connected
    (then that connection is used, whatever ``address`` says).

    The connection stays open for later calls in this process: Ray Data cannot run an actor pool again in a
    process that disconnected from a cluster and connected anew (ray-project/ray#54841). ``ray.shutdown()``
    drops it; a local instance started here ends with the process.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    address = (address or "auto").strip()
    if address == "auto" and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    if address != "auto":
        check_address(address)
    try:
        try:
            ray.init(address=address, **common)
        except ConnectionError:
            if address != "auto":
                raise
            # no cluster running on this machine: start a local one
            ray.init(address="local", object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
    except Exception as exc:  # AuthenticationError, version mismatch...: one line, not Ray's traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if address == "auto":
            raise EmbedtagError(f"cannot join or start Ray on this machine (--ray-address auto): {first}") from None
        raise EmbedtagError(f"cannot join the Ray cluster at {address}: {first} (its head answers: check that this "
                            "machine's Ray version and RAY_AUTH_MODE match the cluster's)") from None
    return True


def check_address(address: str | None) -> None:
    """A HOST:PORT address must parse and accept a connection (a dead one would otherwise stall in Ray's own
    connection retries for a minute); ``auto`` and ``ray://`` addresses are left to Ray."""
    address = (address or "auto").strip()
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ParamError(f"--ray-address {address!r}: use auto or HOST:PORT (the head's GCS port, 6379 by default)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise EmbedtagError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start its head "
                            "with `ray start --head`, or use --ray-address auto") from None


def _configure_ray_data(ray) -> None:
    """Wait for the whole actor pool before feeding it (every actor gets work from the start, and a pool that
    cannot start fails after ACTOR_START_TIMEOUT_S instead of waiting forever); our progress bar is the one shown
    (Ray Data's bars and per-run log lines would interleave with it)."""
    ctx = ray.data.DataContext.get_current()
    ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    from ray.util import log_once

    log_once("ray_data_progress_manager_disabled")  # its "progress bars disabled" notice: we disabled them
    for name in ("ray.data", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


# ----------------------------------------------------------------------------------------------- stages
def _decode_batch(batch: dict, *, sample_rate: int, min_samples: int, window_s: float,
                  max_duration_s: float | None, chunk: int):
    """Ray task: clips -> window rows (+ one meta or error row per clip), yielded ``chunk`` windows at a time."""
    import ray

    node = _node_id()
    in_actor = ray.get_runtime_context().get_actor_id() is not None
    rows = _Rows(node, in_actor)
    for i, clip_id, path in zip(batch["i"], batch["clip_id"], batch["path"]):
        src = ClipSource(str(clip_id), str(path))
        try:
            d = _decode(src, sample_rate, window_s, max_duration_s)
            n = 0
            for win in d.windows:  # a streamed clip may still fail half-way: then an error row closes it
                rows.window(int(i), n, A.pad_to(win, min_samples), win.size / sample_rate)
                n += 1
                if rows.n_windows >= chunk:
                    yield rows.take()
            rows.meta(int(i), n, d)
        except EmbedtagError as exc:
            rows.error(int(i), src, exc)
        except Exception as exc:  # an unexpected decoder failure is still one bad file, as in the local engine
            rows.error(int(i), src, AudioError(src.path or src.clip_id, f"{type(exc).__name__}: {exc}"))
    if len(rows):
        yield rows.take()


class _Rows:
    """Column buffers of the decode stage's output (every row kind has every column, so blocks share a schema)."""

    COLUMNS = ("i", "kind", "w", "samples", "weight_s", "n_windows", "duration_s", "sample_rate", "channels",
               "peak", "sum_sq", "n_samples", "err_type", "err_path", "err_reason", "decode_node", "decoded_in_actor")

    def __init__(self, node: str, in_actor: bool):
        self.node, self.in_actor = node, in_actor
        self.cols: dict[str, list] = {c: [] for c in self.COLUMNS}
        self.n_windows = 0

    def __len__(self) -> int:
        return len(self.cols["i"])

    def _add(self, **values) -> None:
        defaults = {"w": -1, "samples": b"", "weight_s": 0.0, "n_windows": 0, "duration_s": 0.0, "sample_rate": 0,
                    "channels": 0, "peak": 0.0, "sum_sq": 0.0, "n_samples": 0, "err_type": "", "err_path": "",
                    "err_reason": "", "decode_node": self.node, "decoded_in_actor": self.in_actor}
        defaults.update(values)
        for c in self.COLUMNS:
            self.cols[c].append(defaults[c])

    def window(self, i: int, w: int, samples: np.ndarray, weight_s: float) -> None:
        self._add(i=i, kind=WINDOW, w=w, samples=np.ascontiguousarray(samples, np.float32).tobytes(),
                  weight_s=weight_s)
        self.n_windows += 1

    def meta(self, i: int, n: int, d: _Decoded) -> None:
        self._add(i=i, kind=META, n_windows=n, duration_s=float(d.duration_s), sample_rate=int(d.sample_rate),
                  channels=int(d.channels), peak=float(d.levels.peak), sum_sq=float(d.levels.sum_sq),
                  n_samples=int(d.levels.n))

    def error(self, i: int, src: ClipSource, exc: EmbedtagError) -> None:
        self._add(i=i, kind=ERROR, err_type=type(exc).__name__, err_path=str(getattr(exc, "path", src.path)),
                  err_reason=str(getattr(exc, "reason", None) or exc))

    def take(self) -> dict:
        types = {"i": np.int64, "kind": np.int8, "w": np.int32, "weight_s": np.float64, "n_windows": np.int64,
                 "duration_s": np.float64, "sample_rate": np.int64, "channels": np.int64, "peak": np.float64,
                 "sum_sq": np.float64, "n_samples": np.int64, "decoded_in_actor": np.bool_}
        out = {c: np.asarray(v, dtype=types.get(c, object)) for c, v in self.cols.items()}
        self.cols = {c: [] for c in self.COLUMNS}
        self.n_windows = 0
        return out


class EmbedActor:
    """Ray actor: one loaded backbone; embeds the window rows of each batch, passes meta and error rows through."""

    def __init__(self, model: str, weights: str | None, device: str, weights_sha256: str | None):
        from embedtag.embeddings.registry import load_backbone

        local = weights if weights and Path(weights).exists() else None  # else: this node's mirror/cache
        self.backbone = load_backbone(model, weights=local, device=device)
        if weights_sha256 and self.backbone.weights_sha256 != weights_sha256:
            raise WeightsError(f"node {socket.gethostname()}: the weights of {model} there "
                               f"({self.backbone.weights_path}) differ from the driver's "
                               f"(sha256 {weights_sha256[:12]}…)")
        self.backbone.warmup()
        self.n_classes = len(self.backbone.class_names)
        self.node, self.pid = _node_id(), os.getpid()

    def __call__(self, batch: dict) -> dict:
        kind = batch["kind"]
        n = len(kind)
        emb = np.zeros((n, self.backbone.embedding_dim), np.float32)
        scores = np.zeros((n, self.n_classes), np.float32) if self.n_classes else None
        has_scores = False
        idx = np.flatnonzero(kind == WINDOW)
        if idx.size:
            out = self.backbone.embed([np.frombuffer(batch["samples"][j], np.float32).copy() for j in idx])
            emb[idx] = out.embeddings
            if out.scores is not None and scores is not None:
                scores[idx] = out.scores
                has_scores = True
        result = {k: v for k, v in batch.items() if k != "samples"}  # audio stops here
        result["embedding"] = emb
        if scores is not None:
            result["scores"] = scores
        result["has_scores"] = np.full(n, has_scores)
        result["embed_node"] = np.full(n, self.node, dtype=object)
        result["embed_pid"] = np.full(n, self.pid, dtype=np.int64)
        return result


# ----------------------------------------------------------------------------------------------- driver
@dataclass
class _Partial:
    windows: dict = field(default_factory=dict)  # window index -> (embedding, scores, weight_s)
    meta: dict | None = None


def run_ray(backbone, sources: Sequence[ClipSource], *, on_batch: Callable[[list[dict]], None],
            on_error: Callable[[ClipSource, EmbedtagError], None], batch_size: int | None = None,
            workers: int | None = None, pooling: str = "mean", window_s: float | None = None,
            max_duration_s: float | None = A.DEFAULT_MAX_DURATION_S, on_progress: Callable[[int], None] | None = None,
            ray_address: str | None = "auto", actors: int | None = None, gpus_per_actor: float = 0.0,
            cpus_per_decoder: float = 1.0, weights: str | os.PathLike | None = None) -> RayRunStats:
    """Embed ``sources`` on a Ray cluster; same callbacks and records as :func:`pipeline.run`.

    ``backbone`` (loaded in the driver) names the model; each actor loads its own copy (on ``cuda`` when
    ``gpus_per_actor`` > 0, else on CPU). ``actors``: size of the actor pool (default: the cluster's GPUs /
    ``gpus_per_actor``, or one per 4 CPUs). ``workers`` is accepted for the signature of ``run`` and unused:
    decoding parallelism is the cluster's CPUs / ``cpus_per_decoder``. ``weights``: the weights path the actors
    use when it exists on their node (default: the driver's). Returns where the work ran.
    """
    batch_size, window_s = run_settings(backbone, pooling=pooling, batch_size=batch_size, window_s=window_s)
    gpus_per_actor = float(gpus_per_actor or 0.0)
    cpus_per_decoder = float(cpus_per_decoder if cpus_per_decoder is not None else 1.0)
    if gpus_per_actor < 0 or cpus_per_decoder <= 0 or (actors is not None and int(actors) < 1):
        raise ParamError(f"need actors >= 1, gpus_per_actor >= 0 and cpus_per_decoder > 0 (got {actors}, "
                         f"{gpus_per_actor}, {cpus_per_decoder})")
    if any(s.samples is not None for s in sources):
        raise ParamError("engine='ray' embeds files; in-memory samples use the local engine")
    stats = RayRunStats(gpus_per_actor=gpus_per_actor)
    if not sources:
        return stats
    ray = import_ray()
    connect(ray_address)  # kept open after the job on purpose, see connect()
    _configure_ray_data(ray)
    resources = ray.cluster_resources()
    stats.nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
    if actors is None:
        actors = int(resources.get("GPU", 0) // gpus_per_actor) if gpus_per_actor else \
            int(resources.get("CPU", 1) // 4)
    stats.actors = actors = max(1, int(actors))
    _check_fits(resources, actors, gpus_per_actor, cpus_per_decoder)
    weights_path = str(weights) if weights else (str(backbone.weights_path) if backbone.weights_path else None)
    env = {"env_vars": {k: os.environ[k] for k in _PASS_ENV if k in os.environ}}
    # absolute: workers do not run in the driver's directory (records keep the path as given)
    items = [{"i": i, "clip_id": s.clip_id, "path": os.path.abspath(s.path)} for i, s in enumerate(sources)]
    n_blocks = min(MAX_INPUT_BLOCKS, max(1, -(-len(items) // DECODE_CLIPS_PER_TASK)))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        _decode_batch, batch_size=DECODE_CLIPS_PER_TASK, batch_format="numpy", num_cpus=cpus_per_decoder,
        fn_kwargs={"sample_rate": backbone.sample_rate, "min_samples": backbone.min_samples, "window_s": window_s,
                       "max_duration_s": max_duration_s, "chunk": batch_size},
        runtime_env=env)
    ds = ds.map_batches(
        EmbedActor, batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=ACTOR_CPUS, memory=ACTOR_MEMORY_BYTES,
        num_gpus=gpus_per_actor or None,
        fn_constructor_kwargs={"model": backbone.name, "weights": weights_path,
                                   "device": "cuda" if gpus_per_actor else "cpu",
                                   "weights_sha256": backbone.weights_sha256},
        runtime_env=env)
    _gather(ds, sources, stats, on_batch=on_batch, on_error=on_error, on_progress=on_progress,
            pooling=pooling)
    return stats


def _check_fits(resources: dict, actors: int, gpus_per_actor: float, cpus_per_decoder: float) -> None:
    """Refuse a pool that the cluster cannot hold now (Ray would wait for it forever; an autoscaling cluster must
    be scaled up before the job)."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    if gpus_per_actor and actors * gpus_per_actor > gpus:
        raise ParamError(f"{actors} actors x {gpus_per_actor:g} GPUs need {actors * gpus_per_actor:g} GPUs; the "
                         f"cluster has {gpus:g}. Lower --actors or --gpus-per-actor")
    if actors * ACTOR_MEMORY_BYTES > resources.get("memory", float("inf")):
        raise ParamError(f"{actors} actors reserve {actors * ACTOR_MEMORY_BYTES / 2**30:g} GiB; the cluster has "
                         f"{resources['memory'] / 2**30:.1f} GiB for tasks. Lower --actors")
    if actors * ACTOR_CPUS + cpus_per_decoder > cpus:
        raise ParamError(f"{actors} actors ({ACTOR_CPUS:g} CPU each) plus one decoder ({cpus_per_decoder:g} CPU) "
                         f"need {actors * ACTOR_CPUS + cpus_per_decoder:g} CPUs; the cluster has {cpus:g}. "
                         "Lower --actors or --cpus-per-decoder")


def _gather(ds, sources: Sequence[ClipSource], stats: RayRunStats, *, on_batch, on_error, on_progress,
            pooling: str) -> None:
    """Driver side: pool each clip's windows once all have arrived; every clip is closed exactly once."""
    partial: dict[int, _Partial] = {}
    closed: set[int] = set()
    try:
        batches = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
        for b in batches:
            records = []
            has_scores = "scores" in b
            for r in range(len(b["i"])):
                i, kind = int(b["i"][r]), int(b["kind"][r])
                if i in closed:
                    stats.duplicates += 1
                    continue
                if kind == ERROR:
                    closed.add(i)
                    partial.pop(i, None)
                    on_error(sources[i], _rebuild_error(b, r))
                    if on_progress:
                        on_progress(1)
                    continue
                p = partial.setdefault(i, _Partial())
                if kind == WINDOW:
                    node = str(b["embed_node"][r])
                    stats.embed_nodes[node] += 1
                    stats.embed_actors[(node, int(b["embed_pid"][r]))] += 1
                    p.windows[int(b["w"][r])] = (
                        np.array(b["embedding"][r], np.float32),
                        np.array(b["scores"][r], np.float32) if has_scores and b["has_scores"][r] else None,
                        float(b["weight_s"][r]))  # a Python float, as in the local engine (float32 arithmetic)
                else:
                    stats.decode_nodes[str(b["decode_node"][r])] += 1
                    stats.decoded_in_actor += int(bool(b["decoded_in_actor"][r]))
                    p.meta = {k: b[k][r] for k in ("n_windows", "duration_s", "sample_rate", "channels", "peak",
                                                   "sum_sq", "n_samples")}
                if p.meta is not None and len(p.windows) == int(p.meta["n_windows"]):
                    records.append(_finish(sources[i], p, pooling))
                    closed.add(i)
                    del partial[i]
            if records:
                on_batch(records)
                if on_progress:
                    on_progress(len(records))
    except EmbedtagError:
        raise
    except Exception as exc:  # a failure Ray gave up on (retries exhausted, cluster lost): one line
        own = _embedtag_cause(exc)
        if own is not None:
            raise own from None
        raise EmbedtagError(f"the Ray job failed: {_root_cause(exc)}; clips stored so far are kept, "
                            "rerun to resume") from None
    missing = [sources[i] for i in range(len(sources)) if i not in closed]
    if missing:
        raise EmbedtagError(f"the Ray job ended with {len(missing)} clips incomplete (e.g. {missing[0].path}); "
                            "rerun to embed them")


def _finish(src: ClipSource, p: _Partial, pooling: str) -> dict:
    m = p.meta
    levels = A.LevelMeter()
    levels.peak, levels.sum_sq, levels.n = float(m["peak"]), float(m["sum_sq"]), int(m["n_samples"])
    acc = _Acc(_Decoded(src, [], float(m["duration_s"]), int(m["sample_rate"]), int(m["channels"]), levels))
    for w in range(int(m["n_windows"])):  # in window order, as the local engine adds them
        emb, scores, weight = p.windows[w]
        acc.open += 1
        acc.add(emb, scores, weight)
    return _record(acc, pooling)


def _rebuild_error(b: dict, r: int) -> EmbedtagError:
    from embedtag import errors

    name, path, reason = str(b["err_type"][r]), str(b["err_path"][r]), str(b["err_reason"][r])
    cls = getattr(errors, name, None)
    if cls is AudioError or not (isinstance(cls, type) and issubclass(cls, EmbedtagError)):
        return AudioError(path, reason)
    try:
        exc = cls(reason)
    except TypeError:
        return AudioError(path, reason)
    exc.reason = reason
    return exc


def _root_cause(exc: BaseException) -> str:
    """The deepest exception with a message in a Ray exception's cause chain, as one line."""
    best, seen = exc, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if str(exc).strip():
            best = exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    lines = [ln.strip() for ln in str(best).strip().splitlines() if ln.strip()]
    return f"{type(best).__name__}: {lines[0][:300]}" if lines else type(best).__name__


def _embedtag_cause(exc: BaseException) -> EmbedtagError | None:
    """An EmbedtagError raised inside a task or actor (e.g. a node's weights differ), if that is what failed."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, EmbedtagError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


# ----------------------------------------------------------------------------------------------- local clusters
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def loopback_cluster(n_nodes: int = 2, cpus_per_node: int = 2, object_store_bytes: int = 256 << 20):
    """A Ray cluster of ``n_nodes`` nodes on this machine (``ray start --head`` + ``ray start --address`` on
    127.0.0.1, own ports and temp dirs); yields the head's address. For tests and benchmarks of the cluster path.

    Stopped by killing the processes it started (found by its temp dirs and port), never with ``ray stop``, which
    would stop every Ray instance on the machine.
    """
    ray_bin = Path(sys.executable).with_name("ray")
    port = free_port()
    address = f"127.0.0.1:{port}"
    dirs = [tempfile.mkdtemp(prefix=f"embedtag-ray{port}-{k}-") for k in range(n_nodes)]
    # no token authentication on loopback (drivers must run with RAY_AUTH_MODE=disabled too)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", "--num-gpus=0",
              f"--object-store-memory={object_store_bytes}", "--disable-usage-stats"]
    try:
        for k, tmp in enumerate(dirs):
            ports = [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                     f"--runtime-env-agent-port={free_port()}"]
            where = ["--head", f"--port={port}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}"] if k == 0 \
                else [f"--address={address}"]
            cmd = [str(ray_bin), "start", *where, *common, *ports, f"--temp-dir={tmp}"]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
            if done.returncode:
                raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        yield address
    finally:
        _kill_tree([*dirs, f":{port} ", f":{port}\0", f"--port={port}", f"--address={address}"])
        for tmp in dirs:
            shutil.rmtree(tmp, ignore_errors=True)


def _kill_tree(marks: list[str]) -> None:
    """SIGKILL every process whose command line holds one of ``marks``, and their descendants."""
    me = os.getpid()
    procs: dict[int, tuple[int, str]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace") + "\0"
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(d)] = (ppid, cmd)
    doomed = {p for p, (_, cmd) in procs.items() if any(m in cmd for m in marks)}
    grew = True
    while grew:
        more = {p for p, (pp, _) in procs.items() if pp in doomed and p not in doomed}
        doomed |= more
        grew = bool(more)
    for p in doomed:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.5)
