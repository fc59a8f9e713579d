"""Shared helpers for the PyTorch backbones: same-length grouping, device transfer, mixed precision."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np

from embedtag.embeddings.backbones.base import Backbone, BackboneOutput
from embedtag.errors import WeightsError


def same_length_batches(waves: Sequence[np.ndarray], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by exact length, at most ``batch_size`` each.

    Convolutions see padding, so a clip padded to its batch's longest member gets another embedding; grouping
    by exact length keeps every row equal to the clip embedded alone (full windows of long files share a length,
    so they still batch fully).
    """
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, w in enumerate(waves):
        by_len[w.shape[0]].append(i)
    for idx in by_len.values():
        for start in range(0, len(idx), batch_size):
            yield idx[start:start + batch_size]


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


class TorchBackbone(Backbone):
    """A PyTorch backbone: subclasses set ``mixed_precision`` and implement ``_forward(x)`` returning
    (clip embeddings, class probabilities, frame embeddings) for a (batch, samples) tensor."""

    mixed_precision: bool = True
    #: PyTorch's OpenMP threads busy-wait: with a decoding thread on the same cores, the default of one thread per
    #: core ran efficientat-mn04 5-13x slower than one thread on a busy 2-core machine (1.5-3.8 s vs 19-31 s for
    #: 30 clips of ~7 s), so the model gets the cores decoding leaves, unless the windows are long (below)
    spare_cores_only = True
    _threads: tuple[int, int, bool] | None = None  # (spare cores, every core, decided) inside cpu_threads()
    #: windows this long (median of a job's first call) get every core, decoded between model calls: decoding is
    #: then a small share. On an idle 2-core machine efficientat-mn04 embedded 60 clips of ~7 s in 1.4-1.8 s so
    #: against 2.0-2.3 s on one core beside a decoding thread; 200 clips of median 0.45 s took 2.9 s on one core
    #: beside the decoder, 3.5-3.9 s on both. A heavier network sets it lower (PANNs: 0)
    all_cores_min_s = 4.0

    @contextmanager
    def cpu_threads(self, n: int):
        import torch

        if not self.device.startswith("cpu"):
            yield
            return
        before = torch.get_num_threads()
        self._threads = (max(1, int(n)), before, False)
        torch.set_num_threads(self._threads[0])
        try:
            yield
        finally:
            self._threads = None
            self.decode_inline = False
            torch.set_num_threads(before)

    def _choose_threads(self, waves: Sequence[np.ndarray]) -> None:
        """Inside :meth:`cpu_threads`, the first call decides for the rest of the job: windows of a median
        ``all_cores_min_s`` or more get every core back and the pipeline decodes between model calls
        (``decode_inline``: decoding is then a small share of the work), shorter ones keep the spare cores beside
        the decoding threads. Decided once: switching the thread count call by call cost more than it saved."""
        if self._threads is None or self._threads[2] or not waves:
            return
        import torch

        spare, every, _ = self._threads
        long_windows = np.median([len(w) for w in waves]) >= self.all_cores_min_s * self.sample_rate
        torch.set_num_threads(every if long_windows else spare)
        self._threads = (spare, every, True)
        self.decode_inline = bool(long_windows and every > spare)

    def _forward(self, x):
        raise NotImplementedError

    def embed(self, waves: Sequence[np.ndarray], *, return_frames: bool = False,
              batch_size: int | None = None) -> BackboneOutput:
        import torch

        waves = [np.pad(np.asarray(w, np.float32), (0, max(0, self.min_samples - len(w)))) for w in waves]
        emb = np.zeros((len(waves), self.embedding_dim), np.float32)
        scores = np.zeros((len(waves), len(self.class_names)), np.float32)
        frames: list = [None] * len(waves)
        self._choose_threads(waves)
        with torch.inference_mode(), autocast(self.device, self.mixed_precision):
            for idx in same_length_batches(waves, batch_size or self.default_batch_size):
                x = to_device(np.stack([waves[i] for i in idx]), self.device)
                clip, prob, fr = self._forward(x)
                emb[idx] = clip.float().cpu().numpy()
                scores[idx] = prob.float().cpu().numpy()
                if return_frames:
                    fr = fr.float().cpu().numpy()
                    for j, i in enumerate(idx):
                        frames[i] = fr[j]
        return BackboneOutput(emb, scores, frames if return_frames else None)
