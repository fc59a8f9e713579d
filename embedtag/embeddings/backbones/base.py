"""The one small interface every backbone implements.

A backbone turns a list of mono float32 waveforms at its own ``sample_rate`` into clip embeddings (and
AudioSet class scores). Row ``i`` of the output depends on ``waves[i]`` alone: however inputs are grouped
internally for speed, padding never leaks into another clip's result (batch invariance).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class BackboneOutput:
    #: (n, embedding_dim) float32 clip embeddings
    embeddings: np.ndarray
    #: (n, n_classes) float32 AudioSet class probabilities, or None if the model has no classifier
    scores: np.ndarray | None = None
    #: per input, (n_frames, embedding_dim) frame embeddings, when asked for
    frames: list[np.ndarray] | None = None


class Backbone(ABC):
    """Pretrained audio model that yields embeddings. Instances come from ``registry.load_backbone``."""

    #: registry name, e.g. "yamnet"
    name: str
    #: weights folder name under EMBEDTAG_WEIGHTS_DIR, e.g. "yamnet"
    family: str
    sample_rate: int
    embedding_dim: int
    #: shorter inputs are zero-padded to this many samples
    min_samples: int
    #: names of the classes behind ``BackboneOutput.scores``
    class_names: list[str]
    #: "cpu" or "cuda[:n]"
    device: str = "cpu"
    weights_path: Path | None = None
    #: batch size that keeps the device busy without wasting memory
    default_batch_size: int = 32
    #: inputs a job needs before :meth:`warmup` pays for itself (what it costs against what it saves, measured
    #: per backbone); None: never (no warm-up, or one that never pays)
    warmup_min_inputs: int | None = None
    #: the pipeline's first batch (windows); later ones double up to the batch size, so the model starts once a
    #: few clips are decoded instead of a whole batch. For backbones that call the model per clip anyway (the batch
    #: size buys them nothing); None: every batch is full size
    first_batch_size: int | None = None
    #: most model calls of one batch that run in parallel on CPU (one per core, up to this; see ``parallel_slots``)
    max_parallel: int = 8
    #: model calls of one batch run in this many threads at once (see ``_in_parallel``); 1: one after another
    _n_parallel: int = 1
    _executor = None

    @abstractmethod
    def embed(self, waves: Sequence[np.ndarray], *, return_frames: bool = False) -> BackboneOutput:
        """Embed each waveform (mono float32 at ``self.sample_rate``)."""

    def warmup(self) -> None:
        """Pay one-off first-call costs (allocator growth, kernel selection) before timing-relevant work.

        The pipeline calls this once per instance before a job of at least ``warmup_min_inputs`` inputs. The
        default does nothing; a backbone whose first large calls are measurably slow overrides it (and sets
        ``warmup_min_inputs``)."""
        return None

    def cpu_job(self):
        """Context manager the pipeline runs a whole job in, with its decoding threads beside the model: a backbone
        may change how it uses the CPU for the job (``TorchBackbone``: single-threaded calls in parallel), and puts
        everything back after it. The default changes nothing."""
        return nullcontext()

    def parallel_slots(self) -> int:
        """Calls a batch can run in parallel on this machine: one per core, at most ``max_parallel``."""
        return max(1, min(self.max_parallel, cpu_cores()))

    def _in_parallel(self, n_jobs: int, one: Callable, calls: Sequence | None = None) -> None:
        """``one(call, j)`` for every job ``j`` of a batch, spread over ``_n_parallel`` threads (each passes its own
        entry of ``calls``, default None: e.g. an interpreter of its own); in this thread when there is one."""
        calls = list(calls) if calls is not None else [None] * self._n_parallel
        calls = calls[:max(1, min(len(calls), n_jobs))]
        if len(calls) > 1 and (self._executor is None or self._executor._max_workers < len(calls)):
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(len(calls), thread_name_prefix=self.name)
        in_parallel(self._executor if len(calls) > 1 else None, calls, n_jobs, one)

    @property
    def weights_sha256(self) -> str | None:
        from embedtag.embeddings.weights import fingerprint

        return fingerprint(self.weights_path) if self.weights_path else None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, dim={self.embedding_dim}, "
                f"sample_rate={self.sample_rate}, device={self.device!r})")


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container may limit), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def in_parallel(executor, calls: Sequence, n_jobs: int, one: Callable) -> None:
    """``one(call, j)`` for every job ``j`` in ``range(n_jobs)``, taken in order by one thread of ``executor`` per
    entry of ``calls`` (each thread passes its own entry); ``executor`` None runs them all in this thread on
    ``calls[0]``. Small models ran faster as single-threaded calls in parallel than as one call on every core (their
    many small ops sync a multi-threaded pool at each step; see the backbones). A failing job stops the other threads
    and is raised."""
    lock, nxt = threading.Lock(), [0]

    def work(call) -> None:
        while True:
            with lock:
                if nxt[0] >= n_jobs:
                    return
                j = nxt[0]
                nxt[0] += 1
            try:
                one(call, j)  # PyTorch, TensorFlow and TFLite release the GIL while they compute
            except BaseException:
                with lock:
                    nxt[0] = n_jobs
                raise

    if executor is None:
        work(calls[0])
        return
    for f in [executor.submit(work, call) for call in calls]:
        f.result()


def resolve_device(device: str | None) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; explicit CUDA without a GPU is a clear error."""
    from embedtag.errors import EmbedtagError

    device = (device or "auto").lower()
    if device == "auto":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise EmbedtagError(f"--device {device} asked for, but no CUDA GPU is visible to torch; use --device cpu")
    elif device != "cpu":
        raise EmbedtagError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
    return device
