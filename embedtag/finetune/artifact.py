"""A finished fine-tuning run as a predictor: fold networks ensembled, test-time averaging over crops.

Run directory layout (no pickle anywhere)::

    RUN/config.json              {"kind": "finetuned-run", "format_version", "embedtag_version", "created_at"
                                  (the common artifact header; runs before it say "kind": "finetuned"),
                                  "backbone", "vocabulary", "multi_label", "output" ("sigmoid", or
                                  "softmax" for a single-label run), "thresholds" (per class, from the
                                  validation predictions; null without validation clips), "front_end",
                                  "crop_s", "tta_crops", "models": ["fold0/model.safetensors", ...],
                                  "train": {...}, "train_clip_ids", "unreadable", "cv_lwlrap", "fold_lwlrap",
                                  "dataset", ...}
    RUN/fold<k>/model.safetensors  network weights (front end is rebuilt from "front_end")
    RUN/log.csv, RUN/training.png  per-epoch record (fold, stage, epoch, loss, val_lwlrap, lr, clips_per_s)
    RUN/oof.csv                    out-of-fold probabilities of the curated clips (with folds >= 2)

Format 2 added "output" and "thresholds"; format 1 runs were all trained with independent sigmoids, whatever
their "multi_label" says, and are read so.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedtag import artifacts
from embedtag.errors import ArtifactError, IncompatibleError

#: 2: single-label runs output a softmax (an older reader would apply a sigmoid to their logits)
FORMAT_VERSION = 2
OUTPUTS = ("sigmoid", "softmax")


def is_finetuned(path: str | os.PathLike) -> bool:
    """True when ``path`` is a run directory written by :func:`embedtag.finetune.finetune`."""
    try:
        info = artifacts.identify(path)
    except ArtifactError:
        return False
    return info is not None and info.kind == artifacts.RUN


@dataclass
class RunConfig:
    """The fields of a run's config.json that loading it needs (validated one by one; others are records)."""

    backbone: str
    vocabulary: list[str]
    front_end: dict
    crop_s: float
    tta_crops: int
    models: list[str]
    width_mult: float = 0.4
    multi_label: bool = True
    #: None: a format 1 run (sigmoid)
    output: str | None = None
    thresholds: list[float] | None = None
    train_clip_ids: list[str] | None = None

    def __post_init__(self):
        if not self.vocabulary:
            raise ValueError("field 'vocabulary' is empty")
        if self.output is not None and self.output not in OUTPUTS:
            raise ValueError(f"field 'output' must be one of {OUTPUTS}, got {self.output!r}")
        if self.output == "softmax" and self.multi_label:
            raise ValueError("field 'output' is softmax but 'multi_label' is true")
        if self.thresholds is not None and (len(self.thresholds) != len(self.vocabulary)
                                            or not all(0 <= t <= 1 for t in self.thresholds)):
            raise ValueError("field 'thresholds' must hold one number in [0, 1] per vocabulary label")
        if not self.models:
            raise ValueError("field 'models' is empty")
        if not (self.crop_s > 0 and self.tta_crops >= 1 and self.width_mult > 0):
            raise ValueError("fields 'crop_s', 'tta_crops' and 'width_mult' must be > 0")


def read_run_config(path: str | os.PathLike):
    """(config.json as written, its validated fields, the front end) of the run at ``path``; WrongKindError
    when ``path`` is another kind of artifact, ArtifactError naming the file and field when it is damaged."""
    info = artifacts.read_header(path, artifacts.RUN, FORMAT_VERSION)
    run = artifacts.validated(info.meta, RunConfig, info.meta_path)
    from embedtag.embeddings.backbones.efficientat import FrontEndConfig

    front_end = artifacts.validated(run.front_end, FrontEndConfig, f"{info.meta_path} (front_end)",
                                    allow_unknown=False)
    return info.meta, run, front_end


def predict_waves(models, waves: Sequence[np.ndarray], crop_samples: int, tta_crops: int, device: str,
                  batch_size: int = 32, amp: bool = True, softmax: bool = False) -> np.ndarray:
    """Mean over ``models`` and over each clip's crops of the sigmoid outputs (``softmax=True``: of the softmax,
    so each row sums to 1): (n_clips, n_labels) float32.

    Every crop has the same length, so crops of different clips batch together without changing any result
    (BatchNorm in eval mode)."""
    import torch

    from embedtag.embeddings.backbones._torch_util import autocast, to_device
    from embedtag.finetune.data import eval_crops

    crops, owner = [], []
    for i, w in enumerate(waves):
        c = eval_crops(np.asarray(w, np.float32), crop_samples, tta_crops)
        crops.append(c)
        owner += [i] * len(c)
    if not crops:
        raise ValueError("no clips to predict")
    allc = np.concatenate(crops)
    owner = np.asarray(owner)
    probs = None
    for model in models:
        model.eval()
        outs = []
        with torch.inference_mode(), autocast(device, amp):
            for s in range(0, len(allc), batch_size):
                x = to_device(allc[s:s + batch_size], device)
                logits = model(x).float()
                outs.append((torch.softmax(logits, 1) if softmax else torch.sigmoid(logits)).cpu().numpy())
        p = np.concatenate(outs)
        probs = p if probs is None else probs + p
    probs /= len(models)
    out = np.zeros((len(waves), probs.shape[1]), np.float32)
    np.add.at(out, owner, probs)
    return out / np.bincount(owner, minlength=len(waves))[:, None]


class FinetunedModel:
    """Loaded run: ``vocabulary``, ``backbone_name``, ``multi_label``, ``softmax`` (True: rows sum to 1, as a
    single-label run trained them; format 1 runs are sigmoids), ``thresholds_`` (per-class decision thresholds
    from the run's validation predictions, as a head's; None when the run had no validation clips),
    ``train_clip_ids`` (the clips it was trained on; None for runs written before they were recorded),
    ``predict_proba_files(paths)``, ``predict_proba_waves``."""

    def __init__(self, path: str | os.PathLike, device: str = "auto"):
        import torch
        from safetensors.torch import load_file

        from embedtag.embeddings.backbones.base import resolve_device
        from embedtag.finetune.model import FinetuneNet

        self.path = Path(path)
        self.config, run, self.front_end = read_run_config(self.path)
        self.vocabulary: list[str] = list(run.vocabulary)
        self.backbone_name: str = run.backbone
        self.multi_label: bool = bool(run.multi_label)
        self.softmax: bool = run.output == "softmax"
        self.thresholds_: list[float] | None = None if run.thresholds is None else [float(t) for t in run.thresholds]
        self.train_clip_ids: list[str] | None = None if run.train_clip_ids is None else list(run.train_clip_ids)
        self.sample_rate = self.front_end.sample_rate
        self.crop_samples = int(round(run.crop_s * self.sample_rate))
        self.tta_crops = int(run.tta_crops)
        self.device = resolve_device(device)
        self.models = []
        for rel in run.models:
            net = FinetuneNet(len(self.vocabulary), run.width_mult, self.front_end)
            try:
                state = load_file(str(self.path / rel))
                net.load_state_dict(state, strict=True)
            except Exception as exc:  # a missing or corrupt weights file must name itself
                raise IncompatibleError(f"{self.path / rel}: cannot load fine-tuned weights "
                                        f"({str(exc).splitlines()[0][:160]})") from None
            net = net.eval().to(self.device)
            if self.device.startswith("cuda"):
                net = net.to(memory_format=torch.channels_last)
            self.models.append(net)

    def __repr__(self) -> str:
        return (f"FinetunedModel({str(self.path)!r}, backbone={self.backbone_name!r}, labels={len(self.vocabulary)}, "
                f"folds={len(self.models)})")

    def predict_proba_waves(self, waves: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """(n, n_labels) probabilities for mono float32 waves at ``self.sample_rate``."""
        return predict_waves(self.models, waves, self.crop_samples, self.tta_crops, self.device, batch_size,
                             softmax=self.softmax)

    def predict_proba_files(self, paths: Sequence[str | os.PathLike], batch_size: int = 32,
                            progress: bool = False, on_error=None) -> np.ndarray:
        """(n, n_labels) probabilities, rows in the order of ``paths``. An unreadable file raises AudioError
        naming it; with ``on_error(i, exc)`` it is reported there instead and its row is NaN."""
        from embedtag.finetune.data import load_waves

        paths = list(paths)
        out = np.full((len(paths), len(self.vocabulary)), np.nan, np.float32)
        chunk = 256  # decode in chunks so long file lists do not sit in memory all at once
        for s in range(0, len(paths), chunk):
            waves = load_waves(paths[s:s + chunk], self.sample_rate, progress=progress,
                               on_error=None if on_error is None else (lambda i, exc, s=s: on_error(s + i, exc)))
            ok = [i for i, w in enumerate(waves) if w is not None]
            if ok:
                out[[s + i for i in ok]] = self.predict_proba_waves([waves[i] for i in ok], batch_size)
        return out

    def predict_proba_store(self, store, rows=None, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Probabilities for the clips of an embedding store, read again from their audio ``path`` (the network
        needs waveforms, not the store's embeddings); ``rows`` is an optional boolean mask."""
        from embedtag.store import resolve_path

        paths = [resolve_path(p) for p in store.table(["path"]).column("path").to_pylist()]
        if rows is not None:
            paths = [p for p, keep in zip(paths, rows) if keep]
        return self.predict_proba_files(paths, batch_size, progress)

    def predict_files(self, inputs, batch_size: int = 32, progress: bool = False):
        """Files or directories -> DataFrame ``fname`` + one column per label (the layout of
        ``embedtag.heads.predict_files``), without the files that could not be read:
        ``frame.attrs["failures"]`` lists them as ``(clip_id, reason)``."""
        from embedtag.heads.api import _frame
        from embedtag.inputs import audio_files, safe_text

        ids, paths = audio_files(inputs)
        failures: list[tuple[str, str]] = []

        def failed(i: int, exc) -> None:  # one unreadable file is recorded; the others are still predicted
            failures.append((ids[i], safe_text(getattr(exc, "reason", None) or str(exc))))

        P = self.predict_proba_files(paths, batch_size, progress, on_error=failed)
        ok = ~np.isnan(P).any(axis=1)
        frame = _frame([c for c, keep in zip(ids, ok) if keep], P[ok], self.vocabulary)
        frame.attrs["failures"] = failures
        return frame


def load_finetuned(path: str | os.PathLike, device: str = "auto") -> FinetunedModel:
    """Load a fine-tuning run directory for prediction (every fold model, ensembled)."""
    return FinetunedModel(path, device=device)
