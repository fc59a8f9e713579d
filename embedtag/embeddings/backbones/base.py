"""The one small interface every backbone implements.

A backbone turns a list of mono float32 waveforms at its own ``sample_rate`` into clip embeddings (and
AudioSet class scores). Row ``i`` of the output depends on ``waves[i]`` alone: however inputs are grouped
internally for speed, padding never leaks into another clip's result (batch invariance).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
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
    #: on CPU, the model's own thread pool gets only the cores the pipeline's decoding threads leave (at least one)
    #: instead of the library's default of every core: right where the pool busy-waits (see ``cpu_threads``)
    spare_cores_only: bool = False
    #: the pipeline's first batch (windows); later ones double up to the batch size, so the model starts once a
    #: few clips are decoded instead of a whole batch. For backbones that call the model per clip anyway (the batch
    #: size buys them nothing); None: every batch is full size
    first_batch_size: int | None = None
    #: set during a job (see ``cpu_threads``) once the model runs on every core: from then on the pipeline decodes
    #: in its own thread between model calls, as a decoding thread beside the model would stall its thread pool
    decode_inline: bool = False

    @abstractmethod
    def embed(self, waves: Sequence[np.ndarray], *, return_frames: bool = False) -> BackboneOutput:
        """Embed each waveform (mono float32 at ``self.sample_rate``)."""

    def warmup(self) -> None:
        """Pay one-off first-call costs (allocator growth, kernel selection) before timing-relevant work.

        The pipeline calls this once per instance before a job of at least ``warmup_min_inputs`` inputs. The
        default does nothing; a backbone whose first large calls are measurably slow overrides it (and sets
        ``warmup_min_inputs``)."""
        return None

    def cpu_threads(self, n: int):
        """Context manager: the model runs on ``n`` CPU threads inside it, as before after it. The default changes
        nothing (a backbone whose pool cannot be resized, or need not be)."""
        return nullcontext()

    @property
    def weights_sha256(self) -> str | None:
        from embedtag.embeddings.weights import fingerprint

        return fingerprint(self.weights_path) if self.weights_path else None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, dim={self.embedding_dim}, "
                f"sample_rate={self.sample_rate}, device={self.device!r})")


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
