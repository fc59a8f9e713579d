"""EfficientAT ``mn04_as`` / ``mn10_as`` / ``mn40_as``: MobileNetV3 AudioSet taggers of width 0.4 / 1.0 / 4.0
(Schmid et al. 2023, mAP 0.432 / 0.471 / 0.484).

The network and its log-mel front end are written here (no torchvision/torchaudio dependency) with module names
that match the released state dict, so ``load_state_dict(strict=True)`` accepts the official checkpoint:

* front end: pre-emphasis (x[n] - 0.97 x[n-1]), STFT (n_fft 1024, 800-sample symmetric Hann, hop 320, centred
  with reflection), power spectrum, 128 Kaldi-style mel bands from 0 Hz to 15 kHz, ``log(mel + 1e-5)``,
  ``(x + 4.5) / 5``. The training-time band-edge jitter and masking are not part of inference.
* body: ``features`` (stem conv + 15 inverted residual blocks + 1x1 conv to 384 channels; BatchNorm eps 1e-3)
  and ``classifier`` (global average pool -> 512 -> Hardswish -> dropout -> 527 logits).

The clip embedding is the global average of the last feature map (384 / 960 / 3840-d; what EfficientAT returns as
``features``); scores are the sigmoid of the 527 AudioSet logits. As upstream's windowed tagger does, long audio is
cut into 10 s windows (the pipeline's ``window_s``, the length the models were trained on) and each window is run
whole; on CUDA the network runs under fp16 autocast (the front end stays fp32), on CPU in fp32.

The dynamic variants (``dymn04/10/20``: dynamic convolutions, dynamic ReLU and coordinate attention) are a different
network, not a width of this one: they live in ``efficientat_dymn.py`` and reuse this front end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from embedtag.embeddings.backbones._torch_util import TorchBackbone, load_checkpoint_state
from embedtag.embeddings.backbones.base import resolve_device
from embedtag.embeddings.registry import audioset_labels
from embedtag.embeddings.weights import resolve
from embedtag.errors import WeightsError

__all__ = ["EfficientATBackbone", "MelFrontEnd", "FrontEndConfig", "MobileNetV3AT", "mn_model",
           "load_mn_state"]


# ------------------------------------------------------------------------------------------------ front end
@dataclass(frozen=True)
class FrontEndConfig:
    """Log-mel settings of the EfficientAT AudioSet checkpoints (stored in fine-tuned artifacts)."""

    sample_rate: int = 32000
    n_fft: int = 1024
    win_length: int = 800
    hop_length: int = 320
    n_mels: int = 128
    fmin_hz: float = 0.0
    fmax_hz: float = 15000.0  # EfficientAT default: sr/2 - 1000 (its training jitters the top edge by +-1 kHz)
    preemphasis: float = 0.97
    log_offset: float = 1e-5
    norm_shift: float = 4.5
    norm_scale: float = 5.0

    def as_dict(self) -> dict:
        return asdict(self)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, fmin_hz: float, fmax_hz: float) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the Kaldi mel scale 1127 ln(1 + f/700).

    The triangles are built in the mel domain (as Kaldi and torchaudio.compliance.kaldi do), over the first
    n_fft/2 FFT bins; the Nyquist bin gets weight 0."""
    def mel(f):
        return 1127.0 * torch.log1p(f / 700.0)

    n_bins = n_fft // 2
    bin_hz = sample_rate / n_fft
    lo, hi = mel(torch.tensor(float(fmin_hz))), mel(torch.tensor(float(fmax_hz)))
    step = (hi - lo) / (n_mels + 1)
    k = torch.arange(n_mels, dtype=torch.float32).unsqueeze(1)
    left, centre, right = lo + k * step, lo + (k + 1) * step, lo + (k + 2) * step
    m = mel(bin_hz * torch.arange(n_bins, dtype=torch.float32)).unsqueeze(0)
    up = (m - left) / (centre - left)
    down = (right - m) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return F.pad(banks, (0, 1))


class MelFrontEnd(nn.Module):
    """Waveform (batch, samples) at 32 kHz -> normalised log-mel (batch, n_mels, frames), on the model's device.

    Computed in fp32 even under autocast: the power spectrum overflows fp16."""

    def __init__(self, config: FrontEndConfig | None = None):
        super().__init__()
        self.config = c = config or FrontEndConfig()
        self.register_buffer("window", torch.hann_window(c.win_length, periodic=False), persistent=False)
        self.register_buffer("mel_banks", kaldi_mel_banks(c.n_mels, c.n_fft, c.sample_rate, c.fmin_hz, c.fmax_hz),
                             persistent=False)
        self.register_buffer("preemph", torch.tensor([[[-c.preemphasis, 1.0]]]), persistent=False)

    def n_frames(self, n_samples: int) -> int:
        """Frames for a wave of ``n_samples`` (pre-emphasis drops one sample; the STFT is centred)."""
        return (n_samples - 1) // self.config.hop_length + 1

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        c = self.config
        with torch.autocast(wave.device.type, enabled=False):
            x = F.conv1d(wave.float().unsqueeze(1), self.preemph).squeeze(1)
            spec = torch.stft(x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=self.window,
                              center=True, pad_mode="reflect", normalized=False, return_complex=True)
            power = spec.real ** 2 + spec.imag ** 2
            mel = torch.matmul(self.mel_banks, power)
            return (torch.log(mel + c.log_offset) + c.norm_shift) / c.norm_scale


# ------------------------------------------------------------------------------------------------ network
def make_divisible(value: float, divisor: int = 8) -> int:
    """Channel count rounded to a multiple of ``divisor``, never more than 10% below ``value`` (MobileNet rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=0.001, momentum=0.01)


class ConvBNAct(nn.Sequential):
    """conv (no bias, 'same' padding) -> BatchNorm -> optional activation; children named 0, 1, 2."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = None):
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups,
                                             bias=False), _bn(c_out)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Channel squeeze-and-excitation: mean over (freq, time) -> fc -> ReLU -> fc -> sigmoid -> rescale."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class ChannelSE(nn.Module):
    """EfficientAT's "concurrent" SE block with only the channel branch (``se_dims='c'``), so the max over
    branches is the identity; kept as a one-element list for state-dict key compatibility."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcite(channels, make_divisible(channels // reduction, 8))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: [1x1 expand] -> depthwise kxk (stride) -> [SE] -> 1x1 project, + skip if shapes
    match."""

    def __init__(self, c_in: int, kernel: int, c_exp: int, c_out: int, use_se: bool, hardswish: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if c_exp != c_in:
            layers.append(ConvBNAct(c_in, c_exp, 1, act=act))
        layers.append(ConvBNAct(c_exp, c_exp, kernel, stride, groups=c_exp, act=act))
        if use_se:
            layers.append(ChannelSE(c_exp))
        layers.append(ConvBNAct(c_exp, c_out, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.residual else y


#: MobileNetV3-Large bottlenecks at width 1.0: (in, kernel, expanded, out, SE, hardswish, stride)
_MNV3_LARGE = [
    (16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1),
]


class MobileNetV3AT(nn.Module):
    """EfficientAT ``MN`` with the "mlp" head. Input (batch, 1, n_mels, frames) log-mel; output
    ``(logits, embedding)``."""

    def __init__(self, width_mult: float = 0.4, num_classes: int = 527, dropout: float = 0.2):
        super().__init__()
        ch = [(make_divisible(i * width_mult), k, make_divisible(e * width_mult), make_divisible(o * width_mult),
               se, hs, s) for i, k, e, o, se, hs, s in _MNV3_LARGE]
        layers: list[nn.Module] = [ConvBNAct(1, ch[0][0], 3, 2, act=nn.Hardswish)]
        layers += [InvertedResidual(*cfg) for cfg in ch]
        last_in = ch[-1][3]
        self.embedding_dim = 6 * last_in
        layers.append(ConvBNAct(last_in, self.embedding_dim, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        hidden = make_divisible(1280 * width_mult)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(self.embedding_dim, hidden),
                                        nn.Hardswish(inplace=True), nn.Dropout(dropout, inplace=True),
                                        nn.Linear(hidden, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, embedding_dim, freq', time') last feature map."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.features(x)
        return self.classifier(fmap), fmap.mean(dim=(2, 3))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold the BatchNorm of each ``ConvBNAct`` into its conv, in place, for inference (an eval-mode model; the
    state dict's names change). One op less per layer, the same outputs up to float rounding: mn04's job calls on
    CPU took 0.71-0.91 s against 0.86-1.24 on 60 long clips, 0.65-0.74 against 0.80-0.84 on 200 short ones."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for m in model.modules():
        if isinstance(m, ConvBNAct) and isinstance(m[1], nn.BatchNorm2d):
            m[0], m[1] = fuse_conv_bn_eval(m[0], m[1]), nn.Identity()
    return model


def mn_model(width_mult: float = 0.4, num_classes: int = 527) -> MobileNetV3AT:
    return MobileNetV3AT(width_mult=width_mult, num_classes=num_classes)


#: EfficientAT releases bare state dicts; the shared loader accepts those (weights_only=True)
load_mn_state = load_checkpoint_state


# ------------------------------------------------------------------------------------------------ backbone
class EfficientATBackbone(TorchBackbone):
    family = "efficientat"
    sample_rate = 32000
    embedding_dim = 384
    min_samples = 32000  # five stride-2 stages: shorter inputs leave a feature map of 1-2 frames
    default_batch_size = 32
    #: the architecture family (names it in errors) and its default width; the dynamic variant
    #: (efficientat_dymn.DyMNBackbone) changes these, ``build`` and ``channels_last``
    arch = "mn"
    default_width_mult = 0.4
    #: channels-last memory layout (the dynamic convs of dymn fold the batch into channels instead)
    channels_last = True
    #: 15 s of audio per CPU call: mn04's calls on 60 real ~7 s clips took 0.34-0.36 s at 2 clips a call against
    #: 0.44-0.46 at 4 and 0.49-0.61 at up to 32 (150k-290k page faults a pass against ~20); on 10 s windows 0.33 s
    #: at 1 against 0.45 at 2 and 0.54-0.60 at 32; mn10 and dymn04 alike; short clips (200) lost nothing (8 per
    #: call 0.43 s, 32 per call 0.45)
    max_call_s_cpu = 15.0

    @staticmethod
    def build(width_mult: float, num_classes: int) -> nn.Module:
        return mn_model(width_mult, num_classes)

    def __init__(self, spec, weights=None, device="auto", offline=None, mixed_precision: bool = True):
        self.name = spec.name
        self.device = resolve_device(device)
        self.mixed_precision = mixed_precision
        self.class_names = audioset_labels()
        self.width_mult = float(spec.options.get("width_mult", self.default_width_mult))
        # wide models hold much larger activations per 10 s window
        self.default_batch_size = int(spec.options.get("batch_size", type(self).default_batch_size))
        self.weights_path = resolve(spec.weights, weights, offline=offline)
        model = self.build(self.width_mult, len(self.class_names))
        state = load_mn_state(self.weights_path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            lines = str(exc).splitlines()
            raise WeightsError(f"{self.weights_path}: does not match the EfficientAT {self.arch} (width "
                               f"{self.width_mult}) architecture: "
                               f"{(lines[1] if len(lines) > 1 else lines[0]).strip()[:200]}"
                               ) from None
        self.embedding_dim = model.embedding_dim
        self.front_end = MelFrontEnd().to(self.device)
        self.model = fold_batchnorm(model.eval()).to(self.device)
        # channels-last on CPU too: mn04's job calls took 0.70-0.89 s on 60 long clips against 0.87-1.06 contiguous,
        # 0.84-0.95 against 0.96-1.03 on 200 short ones (outputs within 3e-6)
        self._channels_last = self.channels_last
        if self._channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _forward(self, wave: torch.Tensor):
        mel = self.front_end(wave).unsqueeze(1)
        if self._channels_last:
            mel = mel.contiguous(memory_format=torch.channels_last)
        fmap = self.model.forward_features(mel)
        logits = self.model.classifier(fmap)
        frames = fmap.mean(dim=2).transpose(1, 2)  # (batch, time', dim): average over frequency only
        return fmap.mean(dim=(2, 3)), torch.sigmoid(logits), frames

