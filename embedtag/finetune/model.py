"""The network that is fine-tuned: a pretrained AudioSet CNN whose 527-way output layer is replaced by one for
the dataset's vocabulary, with its log-mel front end on the same device."""

from __future__ import annotations

import torch
from torch import nn

from embedtag.embeddings.backbones.efficientat import FrontEndConfig, MelFrontEnd, load_mn_state, mn_model


class FinetuneNet(nn.Module):
    """Waveform (batch, samples) at 32 kHz -> logits (batch, n_labels). ``mel`` and ``forward_mel`` are separate
    so training can augment log-mels (mixup, SpecAugment) in between."""

    def __init__(self, n_labels: int, width_mult: float = 0.4, front_end: FrontEndConfig | None = None,
                 seed: int = 0):
        super().__init__()
        self.front_end = MelFrontEnd(front_end)
        self.body = mn_model(width_mult, 527)
        hidden = self.body.classifier[5].in_features
        # the pretrained 384 -> 512 layer stays; only the last (AudioSet-specific) layer is new
        self.body.classifier[5] = nn.Linear(hidden, n_labels)
        # its own generator: the initial weights must not depend on what the process drew before (resume)
        nn.init.normal_(self.body.classifier[5].weight, 0, 0.01, generator=torch.Generator().manual_seed(seed))
        nn.init.zeros_(self.body.classifier[5].bias)

    def mel(self, wave: torch.Tensor) -> torch.Tensor:
        return self.front_end(wave).unsqueeze(1)

    def forward_mel(self, mel: torch.Tensor) -> torch.Tensor:
        return self.body(mel)[0]

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.forward_mel(self.mel(wave))

    def load_pretrained(self, path) -> None:
        """Pretrained AudioSet weights for everything but the new output layer (strict otherwise)."""
        state = {k: v for k, v in load_mn_state(path).items() if not k.startswith("classifier.5.")}
        missing, unexpected = self.body.load_state_dict(state, strict=False)
        from embedtag.errors import WeightsError

        if unexpected or set(missing) != {"classifier.5.weight", "classifier.5.bias"}:
            raise WeightsError(f"{path}: does not match the EfficientAT architecture "
                               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")

    def param_groups(self, lr: float, layer_decay: float, weight_decay: float) -> list[dict]:
        """Layer-wise learning rates: output layer ``lr``, the 384->512 layer ``lr * decay``, feature block i (of
        17) ``lr * decay ** (18 - i)``. Biases and norm parameters get no weight decay."""
        n_feat = len(self.body.features)
        groups: dict[tuple[int, bool], list] = {}
        for name, p in self.body.named_parameters():
            if name.startswith("classifier.5."):
                depth = 0
            elif name.startswith("classifier."):
                depth = 1
            else:
                depth = 1 + n_feat - int(name.split(".")[1])
            groups.setdefault((depth, p.ndim > 1), []).append(p)
        return [{"params": ps, "lr": lr * layer_decay ** depth, "base_lr": lr * layer_decay ** depth,
                 "weight_decay": weight_decay if decay else 0.0, "depth": depth}
                for (depth, decay), ps in sorted(groups.items())]
