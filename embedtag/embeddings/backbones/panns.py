"""PANNs (Kong et al. 2020) Cnn14 and Cnn14_DecisionLevelMax, built from ``panns_inference.models``.

panns_inference's package ``__init__`` runs wget for the AudioSet label CSV at import time (leaving a 0-byte
file when offline) and its ``AudioTagging`` re-downloads any checkpoint under 3e8 bytes, truncating a user's
fp16 or fine-tuned file. So only its ``models`` module is imported (without executing the package ``__init__``),
the 527 labels come with embedtag, and checkpoints are loaded here with ``weights_only=True``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

from embedtag.embeddings.backbones._torch_util import TorchBackbone, load_checkpoint_state
from embedtag.embeddings.backbones.base import resolve_device
from embedtag.embeddings.registry import audioset_labels
from embedtag.embeddings.weights import resolve
from embedtag.errors import WeightsError

#: the hyper-parameters of every released AudioSet checkpoint at 32 kHz
PANNS_CONFIG = dict(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000,
                    classes_num=527)


def import_panns_models() -> types.ModuleType:
    """``panns_inference.models`` without running ``panns_inference/__init__.py`` (and its wget)."""
    if "panns_inference.models" in sys.modules:
        return sys.modules["panns_inference.models"]
    spec = importlib.util.find_spec("panns_inference")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("panns_inference", name="panns-inference")
    had_parent = "panns_inference" in sys.modules
    if not had_parent:
        # A bare namespace stand-in lets the relative import of .pytorch_utils resolve; removed right after so a
        # later `import panns_inference` by the user still gets the real package.
        stub = types.ModuleType("panns_inference")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["panns_inference"] = stub
    try:
        return importlib.import_module("panns_inference.models")
    finally:
        if not had_parent:
            sys.modules.pop("panns_inference", None)


class PannsBackbone(TorchBackbone):
    family = "panns"
    sample_rate = 32000
    embedding_dim = 2048
    min_samples = 32000  # five 2x time poolings need >= ~1 s of frames
    default_batch_size = 16
    #: 20 s of audio per CPU call: Cnn14 on 12 windows of 10 s took 3.2 s at 2 a call against 3.6 at 1 and 4.1
    #: at 4; on 24 clips of ~7 s 4.9-5.0 s at 2 or 4 a call against 5.6 at 1 (see TorchBackbone.max_call_s_cpu)
    max_call_s_cpu = 20.0

    def __init__(self, spec, weights=None, device="auto", offline=None, mixed_precision: bool = True):
        import torch

        self.name = spec.name
        self.arch = spec.options.get("arch", "Cnn14")
        self.device = resolve_device(device)
        self.mixed_precision = mixed_precision
        self.class_names = audioset_labels()
        self.weights_path = resolve(spec.weights, weights, offline=offline)
        models = import_panns_models()
        model = getattr(models, self.arch)(**PANNS_CONFIG)
        state = load_checkpoint_state(self.weights_path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{self.weights_path}: does not match the {self.arch} architecture: "
                               f"{str(exc).splitlines()[1].strip()[:200] if len(str(exc).splitlines()) > 1 else exc}"
                               ) from None
        self.model = model.eval().to(self.device)
        if self.device.startswith("cuda"):
            self.model = self.model.to(memory_format=torch.channels_last)

    def _forward(self, x):
        """Clip embedding, AudioSet probabilities and frame embeddings, from the same trunk as model.forward."""
        import torch
        import torch.nn.functional as F

        m = self.model
        x = m.logmel_extractor(m.spectrogram_extractor(x))
        x = m.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i, block in enumerate([m.conv_block1, m.conv_block2, m.conv_block3, m.conv_block4, m.conv_block5,
                                   m.conv_block6]):
            x = block(x, pool_size=(1, 1) if i == 5 else (2, 2), pool_type="avg")
        x = torch.mean(x, dim=3)  # (B, 2048, T)
        if self.arch == "Cnn14":
            clip = F.relu(m.fc1(torch.max(x, dim=2)[0] + torch.mean(x, dim=2)))
            frames = F.relu(m.fc1(x.transpose(1, 2)))
            scores = torch.sigmoid(m.fc_audioset(clip))
        else:  # decision-level max: frame features first, clip = max over time
            x = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)
            frames = F.relu(m.fc1(x.transpose(1, 2)))
            clip = torch.max(frames, dim=1)[0]
            scores = torch.max(torch.sigmoid(m.fc_audioset(frames)), dim=1)[0]
        return clip, scores, frames
