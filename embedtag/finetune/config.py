"""Validated settings of a fine-tuning run (stored verbatim in the run's config.json)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from embedtag.heads.base import ParamError, check_param

STAGES = ("noisy", "curated")
NOISY_LOSSES = ("weighted", "lsoft")
#: backbones whose network ``embedtag.finetune`` can rebuild and train
FINETUNABLE = ("efficientat-mn04",)


@dataclass
class FinetuneConfig:
    """Hyper-parameters of :func:`embedtag.finetune.finetune`.

    Stage ``"noisy"`` trains on curated + noisy clips (curated ones repeated ``curated_oversample`` times per epoch,
    noisy ones down-weighted by ``noisy_weight`` or trained with the soft-bootstrapping loss Lsoft); stage
    ``"curated"`` then trains on curated clips only (a dataset without noisy clips runs no stage ``"noisy"``:
    :func:`~embedtag.finetune.finetune` drops it, keeping the other stages' epochs). Each stage has its own
    AdamW optimiser and a linear warm-up (``warmup_frac`` of its steps) followed by cosine decay. The new output
    layer learns at ``lr``; each layer below it at ``layer_decay`` times the layer above (the pretrained stem gets
    ~``layer_decay ** 18``)."""

    backbone: str = "efficientat-mn04"
    stages: tuple[str, ...] = STAGES
    #: epochs per stage: one number for every stage, or one per stage
    epochs: int | tuple[int, ...] = 10
    #: K-fold cross-validation over curated clips; 0 trains a single model on every labelled clip
    folds: int = 5
    batch_size: int = 32
    #: training crop length; longer clips are cropped at random, shorter ones zero-padded at a random offset
    crop_s: float = 2.0
    #: crops averaged per clip at validation and prediction time (test-time averaging)
    tta_crops: int = 3
    lr: float = 3e-3
    layer_decay: float = 0.85
    weight_decay: float = 1e-2
    warmup_frac: float = 0.1
    #: Beta(alpha, alpha) mixup of log-mel inputs and targets; 0 disables (the default: on the small real sets of
    #: benchmarks/finetune_compare.py mixup 0.3 with 2 + 2 masks lost ~0.08-0.13 lwlrap; large noisy sets may differ)
    mixup_alpha: float = 0.0
    #: SpecAugment: number of frequency / time masks and their maximum widths
    freq_masks: int = 1
    freq_mask_bins: int = 16
    time_masks: int = 1
    time_mask_frac: float = 0.1
    curated_oversample: int = 2
    noisy_loss: str = "weighted"
    noisy_weight: float = 0.3
    lsoft_beta: float = 0.7
    #: stop a stage after this many epochs without a better validation lwlrap; 0 never stops early
    patience: int = 3
    #: keep each fold's best-validation-epoch weights (True) or its last epoch's (False: the out-of-fold lwlrap
    #: is then not selected on the validation fold itself)
    select_best: bool = True
    #: keep BatchNorm running statistics at their pretrained values (the affine parameters still train); small
    #: batches of a small dataset otherwise pull them away from what the pretrained layers expect
    freeze_bn: bool = True
    seed: int = 0

    def __post_init__(self):
        self.stages = tuple(self.stages)
        check_param(len(self.stages) >= 1 and all(s in STAGES for s in self.stages)
                    and len(set(self.stages)) == len(self.stages), "stages", self.stages,
                    f"distinct stages from {STAGES}")
        ep = (self.epochs,) * len(self.stages) if isinstance(self.epochs, int) else tuple(self.epochs)
        check_param(len(ep) == len(self.stages) and all(isinstance(e, int) and e >= 1 for e in ep), "epochs",
                    self.epochs, "an integer >= 1, or one per stage")
        self.epochs = ep
        check_param(self.backbone in FINETUNABLE, "backbone", self.backbone, f"one of {FINETUNABLE}")
        check_param(isinstance(self.folds, int) and (self.folds == 0 or self.folds >= 2), "folds", self.folds,
                    "0 (no cross-validation) or >= 2")
        check_param(isinstance(self.batch_size, int) and self.batch_size >= 2, "batch_size", self.batch_size, ">= 2")
        check_param(1.0 <= self.crop_s <= 30.0, "crop_s", self.crop_s, "in [1, 30] seconds")
        check_param(isinstance(self.tta_crops, int) and self.tta_crops >= 1, "tta_crops", self.tta_crops, ">= 1")
        check_param(self.lr > 0, "lr", self.lr, "> 0")
        check_param(0 < self.layer_decay <= 1, "layer_decay", self.layer_decay, "in (0, 1]")
        check_param(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        check_param(0 <= self.warmup_frac < 1, "warmup_frac", self.warmup_frac, "in [0, 1)")
        check_param(self.mixup_alpha >= 0, "mixup_alpha", self.mixup_alpha, ">= 0")
        for name in ("freq_masks", "freq_mask_bins", "time_masks", "patience", "seed"):
            check_param(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, name, getattr(self, name),
                        "an integer >= 0")
        for name in ("select_best", "freeze_bn"):
            check_param(isinstance(getattr(self, name), bool), name, getattr(self, name), "True or False")
        check_param(0 <= self.time_mask_frac < 1, "time_mask_frac", self.time_mask_frac, "in [0, 1)")
        check_param(isinstance(self.curated_oversample, int) and self.curated_oversample >= 1, "curated_oversample",
                    self.curated_oversample, "an integer >= 1")
        check_param(self.noisy_loss in NOISY_LOSSES, "noisy_loss", self.noisy_loss, f"one of {NOISY_LOSSES}")
        check_param(0 <= self.noisy_weight <= 1, "noisy_weight", self.noisy_weight, "in [0, 1]")
        check_param(0 < self.lsoft_beta <= 1, "lsoft_beta", self.lsoft_beta, "in (0, 1]")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["stages"], d["epochs"] = list(self.stages), list(self.epochs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ParamError(f"unknown fine-tuning settings: {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
