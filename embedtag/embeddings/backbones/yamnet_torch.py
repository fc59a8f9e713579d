"""YAMNet in PyTorch (``yamnet-torch``): TensorFlow's network and front end, batched across clips, on CPU or CUDA.

The weights are not downloaded again: they are converted once from the YAMNet SavedModel (``yamnet``) or the TFLite
file (``yamnet-lite``) the user already has into ``$EMBEDTAG_HOME/weights/yamnet/yamnet_torch.safetensors``. A
sidecar JSON records the source's sha256 and the converted file's sha256: a changed source is converted again, and a
converted file that no longer matches its recorded sha256 is refused (then reconverted).

Front end (YAMNet's ``features.py``): the waveform is zero-padded to whole 0.48 s hops past the first 0.975 s;
STFT with 25 ms frames (400 samples), 10 ms hop (160), a periodic Hann window, FFT length 512, no centring;
magnitude; 64 mel bands from 125 to 7500 Hz built as ``tf.signal.linear_to_mel_weight_matrix`` builds them (HTK mel
scale, the DC bin excluded); ``log(mel + 0.001)``; patches of 96 frames every 48 frames.

Network (YAMNet's ``yamnet.py``): MobileNetV1 on (96 frames x 64 bands) patches: a 3x3 stride-2 conv to 32 channels
then 13 depthwise-separable blocks, every conv with TensorFlow 'same' padding (extra padding at the bottom/right),
BatchNorm (centre only, no scale, eps 1e-4) and ReLU; global average pool -> the 1024-d patch embedding; dense ->
sigmoid -> 521 scores. BatchNorm is folded into the convs at conversion (the TFLite file already holds them folded),
so the PyTorch net is conv + bias + ReLU throughout.

Patches are independent, so the patches of every clip in a call are stacked into one batch: a clip's patches are
exactly those it gets alone and no padding leaks between clips (batch invariance, up to float rounding).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedtag.embeddings.backbones._torch_util import TorchBackbone, autocast, to_device
from embedtag.embeddings.backbones.base import BackboneOutput, resolve_device
from embedtag.embeddings.backbones.yamnet import n_patches
from embedtag.errors import EmbedtagError, WeightsError

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_LENGTH = 512
MEL_BANDS, MEL_MIN_HZ, MEL_MAX_HZ = 64, 125.0, 7500.0
LOG_OFFSET = 0.001
PATCH_FRAMES, PATCH_HOP_FRAMES = 96, 48
MIN_SAMPLES = 15600  # one patch: 0.96 s + one STFT window - one hop
PATCH_HOP_SAMPLES = 7680  # 0.48 s
BN_EPSILON = 1e-4  # YAMNet params.batchnorm_epsilon; the TFLite file's folded weights agree with it (tested)

#: (kernel, stride, output channels) of the 14 layers; the first is a full conv, the rest depthwise-separable
LAYERS = [(3, 2, 32), (3, 1, 64), (3, 2, 128), (3, 1, 128), (3, 2, 256), (3, 1, 256), (3, 2, 512), (3, 1, 512),
          (3, 1, 512), (3, 1, 512), (3, 1, 512), (3, 1, 512), (3, 2, 1024), (3, 1, 1024)]
CONVERTED_NAME = "yamnet_torch.safetensors"
FORMAT = "embedtag-yamnet-torch/1"

__all__ = [
    "YamnetFrontEnd",
    "YamnetNet",
    "YamnetTorch",
    "convert",
    "linear_to_mel_weight_matrix",
    "load_converted",
    "padded_length",
]


# ------------------------------------------------------------------------------------------------ front end
def linear_to_mel_weight_matrix(num_mel_bins: int = MEL_BANDS, num_spectrogram_bins: int = FFT_LENGTH // 2 + 1,
                                sample_rate: int = SAMPLE_RATE, lower_edge_hertz: float = MEL_MIN_HZ,
                                upper_edge_hertz: float = MEL_MAX_HZ) -> np.ndarray:
    """(num_spectrogram_bins, num_mel_bins) float32, TensorFlow's formula: triangles on the HTK mel scale
    1127 ln(1 + f/700) between equally spaced mel edges, evaluated at the linear bin frequencies; bin 0 (DC) is 0."""
    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)

    # float64, then float32: within 1e-5 of TensorFlow's float32 result (which itself moves by ~6e-6 across versions)
    bins_mel = mel(np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins)[1:])[:, None]
    edges = np.linspace(mel(lower_edge_hertz), mel(upper_edge_hertz), num_mel_bins + 2)
    lower, centre, upper = edges[:-2][None], edges[1:-1][None], edges[2:][None]
    lower_slopes = (bins_mel - lower) / (centre - lower)
    upper_slopes = (upper - bins_mel) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    return np.pad(weights, ((1, 0), (0, 0))).astype(np.float32)


def padded_length(n_samples: int) -> int:
    """YAMNet's ``pad_waveform``: at least one patch, then whole 0.48 s hops, counted with TensorFlow's float32
    rounding (see ``yamnet.n_patches``)."""
    return MIN_SAMPLES + PATCH_HOP_SAMPLES * (n_patches(n_samples) - 1)


class YamnetFrontEnd(nn.Module):
    """1-D waveform (16 kHz) -> (log-mel frames (F, 64), patches (P, 1, 96, 64)); always fp32 (the magnitude
    spectrum of loud audio does not fit fp16 well, and the front end is cheap)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(WINDOW_SAMPLES, periodic=True), persistent=False)
        self.register_buffer("mel", torch.from_numpy(linear_to_mel_weight_matrix()), persistent=False)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(wave.device.type, enabled=False):
            wave = wave.float()
            wave = F.pad(wave, (0, padded_length(wave.shape[-1]) - wave.shape[-1]))
            frames = wave.unfold(-1, WINDOW_SAMPLES, HOP_SAMPLES) * self.window
            magnitude = torch.fft.rfft(frames, n=FFT_LENGTH).abs()
            log_mel = torch.log(magnitude @ self.mel + LOG_OFFSET)
            patches = log_mel.unfold(0, PATCH_FRAMES, PATCH_HOP_FRAMES).transpose(1, 2).unsqueeze(1)
            return log_mel, patches


# ------------------------------------------------------------------------------------------------ network
def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'same' padding (before, after) for one dimension: the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """Conv2d (with bias: BatchNorm folded in) + ReLU, padded like TensorFlow's padding='same'. At stride 1 that
    padding is symmetric and the conv pads itself (no copy); at stride 2 the odd pixel goes after, explicitly."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2 if stride == 1 else 0, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return F.relu(super().forward(x))
        (k_h, k_w), (s_h, s_w) = self.kernel_size, self.stride
        top, bottom = _same_pad(x.shape[-2], k_h, s_h)
        left, right = _same_pad(x.shape[-1], k_w, s_w)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.relu(super().forward(x))


class YamnetNet(nn.Module):
    """MobileNetV1 of YAMNet. Input (patches, 1, 96, 64) log-mel; output (logits (P, 521), embeddings (P, 1024))."""

    def __init__(self, num_classes: int = 521):
        super().__init__()
        k, s, c = LAYERS[0]
        self.stem = SameConv(1, c, k, s)
        blocks = []
        for k, s, out in LAYERS[1:]:
            blocks.append(nn.Sequential(SameConv(c, c, k, s, groups=c), SameConv(c, out, 1)))
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.blocks(self.stem(patches)).mean(dim=(2, 3))
        return self.classifier(emb), emb


# ------------------------------------------------------------------------------------------------ conversion
def _fold(kernel: np.ndarray, bn: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Fold a scale-free BatchNorm (y = (x - mean) / sqrt(var + eps) + beta) into the conv before it; ``kernel``
    is already in torch layout (out channels first)."""
    inv = 1.0 / np.sqrt(bn["moving_variance"].astype(np.float64) + BN_EPSILON)
    w = kernel.astype(np.float64) * inv.reshape(-1, *([1] * (kernel.ndim - 1)))
    b = bn["beta"].astype(np.float64) - bn["moving_mean"].astype(np.float64) * inv
    return w.astype(np.float32), b.astype(np.float32)


def _conv_names() -> list[str]:
    names = ["stem"]
    for i in range(len(LAYERS) - 1):
        names += [f"blocks.{i}.0", f"blocks.{i}.1"]
    return names


def state_from_saved_model(saved_model_dir: Path) -> dict[str, np.ndarray]:
    """Torch state dict (BatchNorm folded) from the SavedModel's variables, read with ``tf.train.load_checkpoint``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from embedtag.embeddings.backbones.yamnet import quiet_native_stderr

    with quiet_native_stderr():
        import tensorflow as tf

        reader = tf.train.load_checkpoint(str(saved_model_dir / "variables" / "variables"))

    def var(i: int, name: str) -> np.ndarray:
        return reader.get_tensor(f"_yamnet/layer_with_weights-{i}/{name}/.ATTRIBUTES/VARIABLE_VALUE")

    state, i = {}, 0
    for n, name in enumerate(_conv_names()):
        depthwise = n > 0 and n % 2 == 1
        if depthwise:  # (kh, kw, C, 1) -> (C, 1, kh, kw)
            kernel = var(i, "depthwise_kernel").transpose(2, 3, 0, 1)
        else:  # (kh, kw, in, out) -> (out, in, kh, kw)
            kernel = var(i, "kernel").transpose(3, 2, 0, 1)
        bn = {k: var(i + 1, k) for k in ("beta", "moving_mean", "moving_variance")}
        state[f"{name}.weight"], state[f"{name}.bias"] = _fold(kernel, bn)
        i += 2
    state["classifier.weight"] = var(i, "kernel").T.copy()
    state["classifier.bias"] = var(i, "bias")
    return state


def state_from_tflite(path: Path) -> dict[str, np.ndarray]:
    """Torch state dict from the TFLite file's constant tensors, found through its conv / dense ops in order."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tensorflow.lite import Interpreter  # type: ignore[no-redef]
    interp = Interpreter(model_path=str(path))
    ops = interp._get_ops_details()  # the public tensor list does not say which conv a constant belongs to
    convs = [o for o in ops if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    dense = [o for o in ops if o["op_name"] == "FULLY_CONNECTED"]
    names = _conv_names()
    if len(convs) != len(names) or not dense:
        raise WeightsError(f"{path}: not a YAMNet TFLite model ({len(convs)} conv ops, expected {len(names)})")
    state = {}
    for name, op in zip(names, convs):
        _, filt, bias = (int(t) for t in op["inputs"])
        w = interp.get_tensor(filt)
        if op["op_name"] == "DEPTHWISE_CONV_2D":  # (1, kh, kw, C) -> (C, 1, kh, kw)
            w = w.transpose(3, 0, 1, 2)
        else:  # (out, kh, kw, in) -> (out, in, kh, kw)
            w = w.transpose(0, 3, 1, 2)
        state[f"{name}.weight"], state[f"{name}.bias"] = np.ascontiguousarray(w), interp.get_tensor(bias).copy()
    _, w, b = (int(t) for t in dense[-1]["inputs"])  # the last dense op is the classifier (the first is the mel matmul)
    state["classifier.weight"], state["classifier.bias"] = interp.get_tensor(w).copy(), interp.get_tensor(b).copy()
    return state


def _sidecar(converted: Path) -> Path:
    return converted.with_name(converted.name + ".json")


def convert(source: Path, out: Path) -> Path:
    """Convert the SavedModel directory or TFLite file ``source`` into safetensors at ``out`` (atomically), with a
    sidecar ``out.json`` recording the source's and the converted file's sha256."""
    from safetensors.numpy import save

    from embedtag.artifacts import atomic_write_bytes, atomic_write_json
    from embedtag.embeddings.weights import file_digest, fingerprint

    source = Path(source)
    if source.is_dir():
        if not (source / "variables" / "variables.index").is_file():
            raise WeightsError(f"{source}: not a YAMNet SavedModel directory (no variables/variables.index)")
        kind = "saved_model"
        try:
            state = state_from_saved_model(source)
        except ImportError:
            raise EmbedtagError(f"converting {source} to yamnet-torch needs TensorFlow (pip install "
                                "'embedtag[yamnet]'), or point --weights at the YAMNet .tflite file instead") from None
    else:
        kind = "tflite"
        try:
            state = state_from_tflite(source)
        except ImportError:
            raise EmbedtagError(f"converting {source} to yamnet-torch needs ai-edge-litert (pip install "
                                "'embedtag[lite]')") from None
        except WeightsError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure means: not a usable TFLite file
            raise WeightsError(f"{source}: cannot read it as a YAMNet TFLite file ({str(exc).splitlines()[0][:160]})"
                               ) from None
    YamnetNet().load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)  # shape check
    source_sha = fingerprint(source)
    data = save({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()},
                metadata={"format": FORMAT, "source_kind": kind, "source_sha256": source_sha})
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    atomic_write_json(_sidecar(out), {"format": FORMAT, "source": str(source), "source_kind": kind,
                                      "source_sha256": source_sha, "sha256": file_digest(out)})
    return out


def load_converted(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a converted file; a file that does not match its sidecar's sha256 is a WeightsError."""
    from safetensors.torch import load_file

    from embedtag.embeddings.weights import file_digest

    side = _sidecar(path)
    if side.is_file():
        recorded = json.loads(side.read_text()).get("sha256")
        if recorded and file_digest(path) != recorded:
            raise WeightsError(f"{path}: sha256 differs from the one recorded at conversion ({side}); delete both "
                               "files to convert again")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means: not a usable converted file
        raise WeightsError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0][:160]})") from None


def _find_source(spec) -> Path | None:
    """The SavedModel or TFLite file the user already has (the SavedModel first when TensorFlow is importable,
    which reads it; else the TFLite file), or None."""
    import importlib.util

    from embedtag.embeddings.registry import get_spec
    from embedtag.embeddings.weights import find

    saved, lite = find(get_spec("yamnet").weights), find(get_spec("yamnet-lite").weights)
    has_tf = importlib.util.find_spec("tensorflow") is not None
    for candidate in ((saved, lite) if has_tf else (lite, saved)):
        if candidate is not None:
            return candidate
    return None


def _resolve_weights(spec, weights, offline: bool | None = None) -> Path:
    """A converted file: ``weights`` if it is one; else the conversion of ``weights`` or of the source found;
    else a converted file already in the mirror or cache; else the TFLite file is resolved as usual (the weights
    manager's download, or its offline message) and converted."""
    from embedtag.embeddings.registry import get_spec
    from embedtag.embeddings.weights import find, resolve

    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsError(f"weights not found: {path}")
        return resolve(spec.weights, path) if path.suffix == ".safetensors" else ensure_converted(path)
    source = _find_source(spec)
    if source is None:
        converted = find(spec.weights)
        if converted is not None:
            return converted
        source = resolve(get_spec("yamnet-lite").weights, offline=offline)
    return ensure_converted(source)


def converted_path(source: Path) -> Path:
    """Where the conversion of ``source`` is cached: ``$EMBEDTAG_HOME/weights/yamnet/yamnet_torch.safetensors``."""
    from embedtag.embeddings.weights import cache_dir

    return cache_dir() / "yamnet" / CONVERTED_NAME


def ensure_converted(source: Path, out: Path | None = None) -> Path:
    """Convert ``source`` unless ``out`` already holds its conversion (same source sha256, intact file)."""
    from embedtag.embeddings.weights import file_digest, fingerprint

    out = out or converted_path(source)
    side = _sidecar(out)
    if out.is_file() and side.is_file():
        try:
            meta = json.loads(side.read_text())
        except ValueError:
            meta = {}
        if meta.get("source_sha256") == fingerprint(source) and meta.get("sha256") == file_digest(out):
            return out
    return convert(source, out)


# ------------------------------------------------------------------------------------------------ backbone
class YamnetTorch(TorchBackbone):
    """YAMNet in PyTorch; ``weights=`` may be a converted ``.safetensors``, the SavedModel directory or the
    ``.tflite`` file (the last two are converted into the cache once)."""

    family = "yamnet"
    sample_rate = SAMPLE_RATE
    embedding_dim = 1024
    min_samples = MIN_SAMPLES
    default_batch_size = 64
    #: patches per network call: bounds activation memory (~0.4 MB per patch at the widest layer). On CPU, in a
    #: job's parallel single-threaded calls, 32 patches beat 64 (60 long clips end to end 1.6 s against 1.9-2.2,
    #: 200 short ones 1.4-1.7 against 1.65-1.7); in one call on every core 64 took 3.8-4.5 ms a patch, 256 5.4-10
    max_patches = 256
    max_patches_cpu = 32

    def __init__(self, spec, weights=None, device="auto", offline=None, mixed_precision: bool = True):
        from embedtag.embeddings.registry import yamnet_labels

        self.name = spec.name
        self.device = resolve_device(device)
        self.mixed_precision = mixed_precision
        self.class_names = yamnet_labels()
        path = _resolve_weights(spec, weights, offline)
        self.weights_path = path
        net = YamnetNet(len(self.class_names))
        try:
            net.load_state_dict(load_converted(path), strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{path}: does not match the YAMNet architecture: "
                               f"{str(exc).splitlines()[-1].strip()[:200]}") from None
        self.front_end = YamnetFrontEnd().to(self.device)
        # channels-last on CPU too: 1.59-1.66 s against 1.82-2.3 contiguous on 60 long clips, 1.04 against
        # 1.13-1.22 on 200 short ones (a job's parallel calls; outputs within 1.2e-5)
        self.model = net.eval().to(self.device).to(memory_format=torch.channels_last)

    def embed(self, waves: Sequence[np.ndarray], *, return_frames: bool = False,
              batch_size: int | None = None) -> BackboneOutput:
        waves = [np.asarray(w, np.float32) for w in waves]
        counts = [n_patches(w.size) for w in waves]
        total = sum(counts)
        emb = np.zeros((total, self.embedding_dim), np.float32)
        prob = np.zeros((total, len(self.class_names)), np.float32)
        per_clip: list = [None] * len(waves)
        order = sorted(range(len(waves)), key=lambda i: -waves[i].size)  # longest first, as the calls below

        def front_end(_, j: int) -> None:
            with torch.inference_mode():  # per thread
                per_clip[order[j]] = self.front_end(to_device(waves[order[j]], self.device))[1]

        self._in_parallel(len(waves), front_end)
        cuda = self.device.startswith("cuda")
        patches = torch.cat(per_clip) if waves else None
        if patches is not None:
            patches = patches.contiguous(memory_format=torch.channels_last)
        # a batch's patches stacked into calls of at most max_patches, at least one call per thread
        step = self.max_patches if cuda else max(1, min(self.max_patches_cpu, -(-total // self._n_parallel)))
        starts = list(range(0, total, step))

        def one(_, j: int) -> None:
            start = starts[j]
            with torch.inference_mode(), autocast(self.device, self.mixed_precision):
                logits, e = self.model(patches[start:start + step])
                emb[start:start + len(e)] = e.float().cpu().numpy()
                prob[start:start + len(e)] = torch.sigmoid(logits.float()).cpu().numpy()

        self._in_parallel(len(starts), one)
        spans = list(pairwise(np.cumsum([0, *counts])))
        clip_emb = np.zeros((len(waves), self.embedding_dim), np.float32)
        clip_prob = np.zeros((len(waves), len(self.class_names)), np.float32)
        for i, (a, b) in enumerate(spans):
            clip_emb[i], clip_prob[i] = emb[a:b].mean(0), prob[a:b].mean(0)
        frames = [emb[a:b] for a, b in spans] if return_frames else None
        return BackboneOutput(clip_emb, clip_prob, frames)
