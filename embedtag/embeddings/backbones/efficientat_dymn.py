"""EfficientAT ``dymn04_as`` / ``dymn10_as`` / ``dymn20_as``: dynamic MobileNets of width 0.4 / 1.0 / 2.0 pretrained
on AudioSet (Schmid et al., "Dynamic Convolutional Neural Networks as Efficient Pre-trained Audio Models", 2024).
Upstream's README lists mAP 0.450 / 0.477 / 0.491 (its default ``dymn20_as`` file is a later 0.493 one) and
1.97 / 10.57 / 40.02 M "parameters": the parameters (1,961,239 / 10,548,479 / 39,966,143) plus the BatchNorm
running statistics.

Same stem, 15-block MobileNetV3-Large layout, 1x1 conv to ``6 x`` the last width and "mlp" classifier as the mn
models, and the same log-mel front end (:class:`~embedtag.embeddings.backbones.efficientat.MelFrontEnd`; upstream's
inference scripts use one preprocessing for both families). Every inverted residual block is dynamic:

* a context generator pools the block input over time and over frequency, maps both sequences through one shared
  1x1 conv (+ BatchNorm, Hardswish) to ``H`` channels and yields a context vector (their mean) plus a frequency and
  a time sequence (1x1 convs to the expanded width, strided like the depthwise conv);
* the expand, depthwise and project convs are dynamic: per example, a softmax over ``K = 4`` kernels (logits from
  the context vector, temperature 1 for the AudioSet checkpoints) mixes them into one kernel;
* the depthwise activation is a dynamic ReLU: ``max(a1 x + b1, a2 x + b2)`` per channel, coefficients from the
  context vector;
* coordinate attention rescales the depthwise output by ``sigmoid(freq sequence) * sigmoid(time sequence)``.

Module and parameter names follow the released state dicts (``in_c``, ``layers.N.context_gen...``, ``out_c``,
``classifier``), so ``load_state_dict(strict=True)`` accepts the official checkpoints. The clip embedding is the
global average of the last feature map (384 / 960 / 1920-d; what upstream returns next to the logits), scores are
the sigmoid of the 527 logits, frames the frequency-averaged last feature map. Long audio comes in 10 s windows from
the pipeline, as for mn; on CUDA the network runs under fp16 autocast (front end in fp32), on CPU in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedtag.embeddings.backbones.efficientat import _MNV3_LARGE, ConvBNAct, EfficientATBackbone, make_divisible

__all__ = ["DyMN", "DyMNBackbone", "dymn_model", "DynamicConv", "DynamicReLU", "ContextGen", "DynamicBlock"]

#: kernels mixed by each dynamic conv, and linear pieces of each dynamic ReLU (upstream defaults, fixed by the
#: checkpoints' shapes)
_DYCONV_K = 4
_DYRELU_M = 2


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=0.001, momentum=0.01)


class DynamicConv(nn.Module):
    """Conv whose kernel is, per example, a softmax-weighted sum of ``k`` kernels (weights from a context vector).

    ``weight`` keeps upstream's layout ``(1, 1, k, out * in/groups * kh * kw)``; ``residuals.0`` maps the context
    to the ``k`` attention logits."""

    def __init__(self, c_in: int, c_out: int, context_dim: int, kernel: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, k: int = _DYCONV_K):
        super().__init__()
        self.c_in, self.c_out, self.kernel, self.groups = c_in, c_out, kernel, groups
        self.stride, self.padding, self.dilation = stride, padding, dilation
        # the AudioSet checkpoints were trained down to temperature 1 (upstream's pretrain_final_temp for *_as)
        self.temperature = 1.0
        self.residuals = nn.Sequential(nn.Linear(context_dim, k))
        w = torch.empty(k, c_out, c_in // groups, kernel, kernel)
        for i in range(k):
            nn.init.kaiming_normal_(w[i], mode="fan_out")
        self.weight = nn.Parameter(w.reshape(1, 1, k, -1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, _, f, t = x.shape
        attention = torch.softmax(self.residuals(context) / self.temperature, dim=-1)  # (b, k)
        w = attention @ self.weight[0, 0]  # (b, out * in/groups * kh * kw)
        if self.kernel == 1 and self.groups == 1:
            # pointwise: one matrix product per example
            return torch.bmm(w.view(b, self.c_out, self.c_in), x.reshape(b, self.c_in, f * t)).view(b, -1, f, t)
        # the batch folded into the channels, so that each example is convolved with its own kernel
        w = w.view(b * self.c_out, self.c_in // self.groups, self.kernel, self.kernel)
        y = F.conv2d(x.reshape(1, b * self.c_in, f, t), w, None, self.stride, self.padding, self.dilation,
                     self.groups * b)
        return y.view(b, self.c_out, y.shape[-2], y.shape[-1])


class DynamicReLU(nn.Module):
    """Per example and channel, ``max_m(a_m x + b_m)``: ``coef_net.0`` gives ``2 M`` values in (-1, 1) per channel,
    scaled by ``lambdas`` and offset by ``init_v`` (so zero logits give a plain ReLU). Both are stored buffers."""

    def __init__(self, channels: int, context_dim: int, m: int = _DYRELU_M):
        super().__init__()
        self.channels, self.m = channels, m
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * m * channels))
        self.register_buffer("lambdas", torch.tensor([1.0] * m + [0.5] * m))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * m - 1)))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        theta = 2 * torch.sigmoid(self.coef_net(context)) - 1
        coefs = theta.view(-1, self.channels, 1, 1, 2 * self.m) * self.lambdas + self.init_v
        # piece by piece rather than one (b, c, f, t, M) tensor: the same values, without M copies of the map
        out = x * coefs[..., 0] + coefs[..., self.m]
        for i in range(1, self.m):
            out = torch.maximum(out, x * coefs[..., i] + coefs[..., self.m + i])
        return out


class ContextGen(nn.Module):
    """Block input -> (context vector (b, H), frequency sequence (b, exp, f', 1), time sequence (b, exp, 1, t'))."""

    def __init__(self, context_dim: int, c_in: int, c_exp: int, stride: int = 1):
        super().__init__()
        self.joint_conv = nn.Conv2d(c_in, context_dim, 1, bias=False)
        self.joint_norm = _bn(context_dim)
        self.conv_f = nn.Conv2d(context_dim, c_exp, 1)
        self.conv_t = nn.Conv2d(context_dim, c_exp, 1)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = x.shape[2]
        per_f = x.mean(dim=3, keepdim=True)  # (b, c, f, 1)
        per_t = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (b, c, t, 1)
        joint = F.hardswish(self.joint_norm(self.joint_conv(torch.cat([per_f, per_t], dim=2))))
        h_f, h_t = joint[:, :, :f], joint[:, :, f:].transpose(2, 3)
        context = joint.mean(dim=(2, 3))
        if self.stride > 1:
            # the sequences follow the depthwise conv's downsampling (zero-padded 3-tap average)
            h_f = F.avg_pool2d(h_f, (3, 1), (self.stride, 1), (1, 0))
            h_t = F.avg_pool2d(h_t, (1, 3), (1, self.stride), (0, 1))
        return context, self.conv_f(h_f), self.conv_t(h_t)


class DynamicBlock(nn.Module):
    """Dynamic inverted residual: [dynamic 1x1 expand -> BN -> act] -> dynamic depthwise -> BN -> dynamic ReLU ->
    coordinate attention -> dynamic 1x1 project -> BN, + skip if shapes match."""

    def __init__(self, c_in: int, kernel: int, c_exp: int, c_out: int, hardswish: bool, stride: int,
                 width_mult: float):
        super().__init__()
        # H: a quarter of the expanded width, kept within [32, 128] x width (upstream's context sizes)
        self.context_dim = int(min(max(make_divisible(c_exp // 4), make_divisible(32 * width_mult)),
                                   make_divisible(128 * width_mult)))
        self.act = F.hardswish if hardswish else F.relu
        self.expand = c_exp != c_in
        if self.expand:
            self.exp_conv = DynamicConv(c_in, c_exp, self.context_dim, 1)
            self.exp_norm = _bn(c_exp)
        self.depth_conv = DynamicConv(c_exp, c_exp, self.context_dim, kernel, stride, (kernel - 1) // 2,
                                      groups=c_exp)
        self.depth_norm = _bn(c_exp)
        self.depth_act = DynamicReLU(c_exp, self.context_dim)
        self.proj_conv = DynamicConv(c_exp, c_out, self.context_dim, 1)
        self.proj_norm = _bn(c_out)
        self.context_gen = ContextGen(self.context_dim, c_in, c_exp, stride)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context, seq_f, seq_t = self.context_gen(x)
        y = self.act(self.exp_norm(self.exp_conv(x, context))) if self.expand else x
        y = self.depth_act(self.depth_norm(self.depth_conv(y, context)), context)
        y = y * torch.sigmoid(seq_f) * torch.sigmoid(seq_t)
        y = self.proj_norm(self.proj_conv(y, context))
        return y + x if self.residual else y


class DyMN(nn.Module):
    """EfficientAT ``DyMN`` (all 15 blocks dynamic, "mlp" head). Input (batch, 1, n_mels, frames) log-mel; output
    ``(logits, embedding)``."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 527, dropout: float = 0.2):
        super().__init__()
        self.width_mult = width_mult
        ch = [(make_divisible(i * width_mult), k, make_divisible(e * width_mult), make_divisible(o * width_mult),
               hs, s) for i, k, e, o, _se, hs, s in _MNV3_LARGE]
        self.in_c = ConvBNAct(1, ch[0][0], 3, 2, act=nn.Hardswish)
        self.layers = nn.ModuleList([DynamicBlock(*cfg, width_mult=width_mult) for cfg in ch])
        last_in = ch[-1][3]
        self.embedding_dim = 6 * last_in
        self.out_c = ConvBNAct(last_in, self.embedding_dim, 1, act=nn.Hardswish)
        hidden = make_divisible(1280 * width_mult)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(self.embedding_dim, hidden),
                                        nn.Hardswish(inplace=True), nn.Dropout(dropout, inplace=True),
                                        nn.Linear(hidden, num_classes))
        for m in self.modules():  # upstream's initialisation (only matters for untrained use, e.g. tests)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, embedding_dim, freq', time') last feature map."""
        x = self.in_c(x)
        for layer in self.layers:
            x = layer(x)
        return self.out_c(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.forward_features(x)
        return self.classifier(fmap), fmap.mean(dim=(2, 3))


def dymn_model(width_mult: float = 1.0, num_classes: int = 527) -> DyMN:
    return DyMN(width_mult=width_mult, num_classes=num_classes)


class DyMNBackbone(EfficientATBackbone):
    """The mn backbone's loading, front end, windows and outputs, with the dynamic network."""

    arch = "dymn"
    default_width_mult = 1.0
    channels_last = False  # the dynamic convs fold the batch into the channel axis

    @staticmethod
    def build(width_mult: float, num_classes: int) -> nn.Module:
        return dymn_model(width_mult, num_classes)
