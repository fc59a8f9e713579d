"""Shared helpers for the PyTorch backbones: same-length grouping, device transfer, mixed precision."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np

from embedtag.embeddings.backbones.base import Backbone, BackboneOutput
from embedtag.errors import WeightsError


def same_length_batches(waves: Sequence[np.ndarray], batch_size: int,
                        max_samples: int | None = None) -> Iterator[list[int]]:
    """Indices grouped by exact length, at most ``batch_size`` each, and at most ``max_samples`` samples in all
    (never fewer than one clip).

    Convolutions see padding, so a clip padded to its batch's longest member gets another embedding; grouping
    by exact length keeps every row equal to the clip embedded alone (full windows of long files share a length,
    so they still batch fully).
    """
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, w in enumerate(waves):
        by_len[w.shape[0]].append(i)
    for n, idx in by_len.items():
        step = batch_size if max_samples is None else max(1, min(batch_size, max_samples // max(1, n)))
        for start in range(0, len(idx), step):
            yield idx[start:start + step]


def to_device(batch: np.ndarray, device: str):
    """numpy -> torch on ``device``; through pinned memory and a non-blocking copy on CUDA."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t


def autocast(device: str, enabled: bool = True):
    """fp16 autocast on CUDA (halves memory traffic of the conv stack), a no-op on CPU."""
    import torch

    if enabled and device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def load_checkpoint_state(path) -> dict:
    """State dict of a checkpoint saved as ``{"model": state_dict, ...}`` (PANNs) or as a bare one (EfficientAT)."""
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a loadable PyTorch checkpoint ({str(exc).splitlines()[0][:160]})") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict or {{'model': state_dict}}, got {type(ckpt).__name__}")
    return state


def split_calls(calls: Iterable[list[int]], n: int) -> list[list[int]]:
    """Halve the largest calls until there are ``n`` (a call of one clip stays whole), so every thread of a batch
    has work; rows of a same-length call stay together in each half, so results do not change."""
    calls = list(calls)
    while 0 < len(calls) < n:
        big = max(calls, key=len)
        if len(big) < 2:
            break
        calls.remove(big)
        calls += [big[:len(big) // 2], big[len(big) // 2:]]
    return calls


class TorchBackbone(Backbone):
    """A PyTorch backbone: subclasses set ``mixed_precision`` and implement ``_forward(x)`` returning
    (clip embeddings, class probabilities, frame embeddings) for a (batch, samples) tensor."""

    mixed_precision: bool = True
    #: on CPU, at most this many seconds of audio in one model call (None: only the batch size limits it). Calls
    #: holding more allocate activations too large for malloc to reuse: each call maps fresh pages and faults them
    #: in (see the subclasses' measurements)
    max_call_s_cpu: float | None = None

    @contextmanager
    def cpu_job(self):
        """On CPU, a job's model calls run single-threaded, in parallel, one per core (up to ``max_parallel``);
        PyTorch's thread count is put back after. PyTorch's OpenMP pool syncs its threads at every op and
        busy-waits, so a decoding thread beside it stalled every call (efficientat-mn04 ran 5-13x slower on a
        busy 2-core machine), while single-threaded calls in parallel leave nothing to stall and use every core.
        Measured end to end on 2 cores, against the earlier rule (every core for long windows, decoded between
        calls; spare cores beside a decoding thread for short ones): mn04 on 60 long clips 1.1-1.3 s against
        1.4-1.6, on 200 short ones 1.74-1.8 against 2.0-2.7; yamnet-torch 1.6 against 2.35-2.6 (long) and
        1.4-1.7 against 1.6-1.85 (short); PANNs about even (9.3-11.9 against 10.3-11.5 s on 30 long clips)."""
        import torch

        if not self.device.startswith("cpu"):
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        self._n_parallel = self.parallel_slots()
        try:
            yield
        finally:
            self._n_parallel = 1
            torch.set_num_threads(before)

    def _forward(self, x):
        raise NotImplementedError

    def embed(self, waves: Sequence[np.ndarray], *, return_frames: bool = False,
              batch_size: int | None = None) -> BackboneOutput:
        import torch

        waves = [np.pad(np.asarray(w, np.float32), (0, max(0, self.min_samples - len(w)))) for w in waves]
        emb = np.zeros((len(waves), self.embedding_dim), np.float32)
        scores = np.zeros((len(waves), len(self.class_names)), np.float32)
        frames: list = [None] * len(waves)
        cap = None if self.device.startswith("cuda") or not self.max_call_s_cpu else \
            int(self.max_call_s_cpu * self.sample_rate)
        calls = split_calls(same_length_batches(waves, batch_size or self.default_batch_size, cap), self._n_parallel)
        calls.sort(key=lambda idx: -len(idx) * len(waves[idx[0]]))  # longest first: no thread waits long at the end

        def one(_, j: int) -> None:
            idx = calls[j]
            with torch.inference_mode(), autocast(self.device, self.mixed_precision):  # both are per thread
                x = to_device(np.stack([waves[i] for i in idx]), self.device)
                clip, prob, fr = self._forward(x)
                emb[idx] = clip.float().cpu().numpy()
                scores[idx] = prob.float().cpu().numpy()
                if return_frames:
                    fr = fr.float().cpu().numpy()
                    for k, i in enumerate(idx):
                        frames[i] = fr[k]

        self._in_parallel(len(calls), one)
        return BackboneOutput(emb, scores, frames if return_frames else None)
