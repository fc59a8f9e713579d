"""K-fold, two-stage (noisy then curated) fine-tuning of a pretrained AudioSet CNN, resumable at epoch ends.

Single-label data (every clip exactly one label, or ``multi_label=False``) trains a softmax with cross-entropy,
multi-label data independent sigmoids with binary cross-entropy, as heads do; the run says which
(``multi_label``, ``output``) and predicts accordingly. A dataset without noisy clips runs no "noisy" stage.
Unreadable training files are recorded (``unreadable`` in config.json) and left out, as ``extract`` does.

Repeatability: every random draw of a training step (crop offsets, mixup, SpecAugment masks, dropout) comes from
a generator seeded with ``(seed, fold, stage, epoch, step)``, and the batch order of an epoch from
``(seed, fold, stage, epoch)``. A checkpoint written atomically after each epoch holds the weights, the optimiser
and gradient-scaler state and the run's bookkeeping, so a run killed mid-epoch and resumed replays that epoch
exactly and ends with the same weights and metrics as an uninterrupted run (on CPU; CUDA kernels may differ in
the last bits).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedtag import artifacts
from embedtag.artifacts import atomic_write
from embedtag.errors import DataError, EmbedtagError, IncompatibleError
from embedtag.finetune.artifact import FORMAT_VERSION, predict_waves
from embedtag.finetune.config import FinetuneConfig

LOG_COLUMNS = ["fold", "stage", "epoch", "loss", "val_lwlrap", "lr", "clips_per_s", "seconds"]
PRETRAINING_NOTE = ("starts from AudioSet-pretrained weights, which the FSDKaggle2019 competition rules did not "
                    "allow; scores are not comparable to the competition leaderboard")


@dataclass
class FinetuneResult:
    path: Path
    cv_lwlrap: float | None
    fold_lwlrap: list[float]
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    #: training files that could not be read, ``(clip_id, reason)``; the run trained on the others
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def multi_label(self) -> bool:
        return bool(self.config.get("multi_label", True))

    @property
    def thresholds(self) -> list[float] | None:
        """Per-class thresholds from the validation predictions (None: the run had no validation clips)."""
        return self.config.get("thresholds")


# --------------------------------------------------------------------------------------------- file helpers
def _save_safetensors(state: dict, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda p: save_file(state, p))


def _write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=1, default=_jsonable)))


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v).__name__)


def _save_checkpoint(path: Path, ck: dict) -> None:
    import torch

    atomic_write(path, lambda p: torch.save(ck, p))


def _load_checkpoint(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise IncompatibleError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0][:160]}); delete it to "
                                "restart the run") from None


def _dataset_fingerprint(ds) -> str:
    h = hashlib.sha256()
    for cid, lab, sub in zip(ds.clip_ids, ds.labels, ds.subsets):
        h.update(f"{cid}\t{','.join(lab or [])}\t{sub}\n".encode())
    h.update("\n".join(ds.vocabulary).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- training pieces
def _lr_factor(step: int, total: int, warmup_frac: float) -> float:
    """Linear warm-up over ``warmup_frac`` of ``total`` steps, then cosine decay to 1% of the peak."""
    warm = int(round(warmup_frac * total))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _spec_augment(mel, cfg: FinetuneConfig, rng: np.random.Generator):
    """Zero (the normalised log-mel's ~quiet level) random frequency bands and time spans of each example."""
    import torch

    b, _, n_f, n_t = mel.shape
    mask = np.zeros((b, 1, n_f, n_t), bool)
    max_t = int(cfg.time_mask_frac * n_t)
    for i in range(b):
        for _ in range(cfg.freq_masks):
            w = int(rng.integers(0, cfg.freq_mask_bins + 1))
            f0 = int(rng.integers(0, max(1, n_f - w + 1)))
            mask[i, 0, f0:f0 + w, :] = True
        for _ in range(cfg.time_masks):
            w = int(rng.integers(0, max_t + 1))
            t0 = int(rng.integers(0, max(1, n_t - w + 1)))
            mask[i, 0, :, t0:t0 + w] = True
    if not mask.any():
        return mel
    return mel.masked_fill(torch.from_numpy(mask).to(mel.device), 0.0)


def _without_noisy_stage(cfg: FinetuneConfig) -> FinetuneConfig:
    """The settings for a dataset without noisy clips: stage "noisy" would only repeat the curated clips, so it
    is dropped (a run of stage "noisy" alone becomes one of stage "curated" with its epochs)."""
    from dataclasses import replace

    kept = [(s, e) for s, e in zip(cfg.stages, cfg.epochs) if s != "noisy"]
    if not kept:
        kept = [("curated", cfg.epochs[0])]
    return replace(cfg, stages=tuple(s for s, _ in kept), epochs=tuple(e for _, e in kept))


def _epoch_items(stage: str, train_idx: np.ndarray, noisy: np.ndarray, cfg: FinetuneConfig) -> np.ndarray:
    cur = train_idx[~noisy[train_idx]]
    if stage == "curated":
        return cur
    return np.concatenate([np.tile(cur, cfg.curated_oversample), train_idx[noisy[train_idx]]])


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for fold in sorted({r["fold"] for r in history}):
        rows = [r for r in history if r["fold"] == fold]
        x = np.arange(1, len(rows) + 1)
        ax1.plot(x, [r["loss"] for r in rows], marker=".", label=f"fold {fold}")
        ax2.plot(x, [r["val_lwlrap"] for r in rows], marker=".", label=f"fold {fold}")
    ax1.set(xlabel="epoch (all stages)", ylabel="training loss", title="loss")
    ax2.set(xlabel="epoch (all stages)", ylabel="validation lwlrap", title="validation lwlrap")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- the API
def finetune(data, backbone: str = "efficientat-mn04", labels=None, out: str | os.PathLike = "finetune_run", *,
             stages=("noisy", "curated"), folds: int = 5, epochs=10, resume: bool = False, device: str = "auto",
             weights: str | os.PathLike | None = None, progress: bool = True, threads: int | None = None,
             on_step: Callable[[int, int, int, int], None] | None = None, multi_label: bool | str = "auto",
             **params) -> FinetuneResult:
    """Fine-tune ``backbone`` on a labelled dataset and write a run directory ``out`` (see
    :mod:`embedtag.finetune.artifact` for its layout); returns the cross-validated (out-of-fold) lwlrap.

    ``data``: dataset folder/CSV (``embedtag.datasets.load_dataset``), or the audio folder when ``labels`` is a
    fname,labels CSV. Clips of subset ``"noisy"`` train in stage ``"noisy"`` only and are never validated on;
    without any, stage ``"noisy"`` is not run. ``"test"`` clips and unlabelled clips are ignored; unreadable
    files are left out and listed in ``result.failures`` (DataError when too few readable clips remain).
    ``multi_label``: ``"auto"`` (single-label, a softmax, when every clip has exactly one label), True or False.
    Per-class decision thresholds are fitted on the out-of-fold validation predictions (none with ``folds=0``)
    and stored in the run. ``params`` are :class:`FinetuneConfig` fields.
    ``resume=True`` continues an interrupted run in ``out`` from its last completed epoch (same settings and data
    required). ``threads`` caps torch's CPU threads for the run (on a shared machine 1 avoids oversubscription).
    ``on_step(fold, stage_index, epoch, step)`` is called after every optimiser step."""
    import torch

    if threads is None:
        return _finetune(data, backbone, labels, out, stages, folds, epochs, resume, device, weights, progress,
                         on_step, multi_label, params)
    if not (isinstance(threads, int) and threads >= 1):
        from embedtag.heads.base import ParamError

        raise ParamError(f"threads={threads!r}: expected an integer >= 1")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _finetune(data, backbone, labels, out, stages, folds, epochs, resume, device, weights, progress,
                         on_step, multi_label, params)
    finally:
        torch.set_num_threads(before)


def _finetune(data, backbone, labels, out, stages, folds, epochs, resume, device, weights, progress, on_step,
              multi_label, params) -> FinetuneResult:
    import torch
    from safetensors.torch import load_file

    from embedtag.embeddings.backbones.base import resolve_device
    from embedtag.embeddings.registry import get_spec
    from embedtag.embeddings.weights import resolve
    from embedtag.finetune.data import check_trainable, load_waves, resolve_dataset, train_crop
    from embedtag.finetune.model import FinetuneNet
    from embedtag.heads.training import stratified_folds
    from embedtag.metrics import lwlrap

    cfg = FinetuneConfig(backbone=backbone, stages=stages, folds=folds, epochs=epochs, **params)
    out = Path(out)
    if not ((out / "checkpoint.pt").is_file() or (out / "run.json").is_file()):  # else: our own unfinished run
        artifacts.prepare_output(out, artifacts.RUN, resume=True)  # refuses a head, a store, someone's files
    if resume:
        for d in (out, *out.glob("fold*")):  # temporary files of a writer killed mid-write
            artifacts.clean_temporaries(d)
    ds = resolve_dataset(data, labels)
    ds = ds.select([i for i, (lab, sub) in enumerate(zip(ds.labels, ds.subsets)) if lab and sub != "test"])
    check_trainable(ds)
    from embedtag.heads.base import resolve_multi_label

    multi_label = resolve_multi_label(multi_label, ds.multi_hot())
    if "noisy" in cfg.stages and "noisy" not in ds.subsets:
        cfg = _without_noisy_stage(cfg)
        skipped = ["noisy"]
    else:
        skipped = []
    identity = {"config": cfg.as_dict(), "dataset": _dataset_fingerprint(ds), "vocabulary": ds.vocabulary,
                "multi_label": multi_label}

    ck_path, run_path = out / "checkpoint.pt", out / "run.json"
    ck = None
    if (out / "config.json").is_file() and not ck_path.exists():
        if not resume:
            raise EmbedtagError(f"{out}: already holds a finished run; choose another --out")
        done = json.loads((out / "config.json").read_text())
        if done.get("identity") != json.loads(json.dumps(identity)):
            raise IncompatibleError(f"{out}: the finished run there used other settings or data")
        return FinetuneResult(out, done.get("cv_lwlrap"), done.get("fold_lwlrap", []), _read_log(out / "log.csv"),
                              done, [(u["clip_id"], u["reason"]) for u in done.get("unreadable", [])])
    started = None  # run.json of the interrupted run: its identity, and the files it found unreadable
    if ck_path.exists() or run_path.exists():
        if not resume:
            raise EmbedtagError(f"{out}: holds an unfinished run; pass --resume to continue it or choose another --out")
        started = json.loads(run_path.read_text()) if run_path.exists() else None
        if started is None or {k: v for k, v in started.items() if k != "unreadable"} != json.loads(
                json.dumps(identity)):
            raise IncompatibleError(f"{out}: the interrupted run there used other settings or data; --resume needs "
                                    "the same ones (see its run.json)")
        if ck_path.exists():
            ck = _load_checkpoint(ck_path)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(run_path, identity if started is None else started)

    console = None
    if progress:
        from rich.console import Console

        console = Console(stderr=True)
        if skipped:
            console.print("no noisy clips: stage noisy is not run", highlight=False)

    dev = resolve_device(device)
    cuda = dev.startswith("cuda")
    spec = get_spec(cfg.backbone)
    weights_path = resolve(spec.weights, weights)
    sr = spec.sample_rate
    crop_n = int(round(cfg.crop_s * sr))
    from embedtag.inputs import safe_text

    failures: list[tuple[str, str]] = []

    def unreadable(i: int, exc) -> None:  # recorded with its reason; training goes on with the readable clips
        failures.append((ds.clip_ids[i], safe_text(getattr(exc, "reason", None) or str(exc))))

    waves = load_waves(ds.paths, sr, progress=progress, on_error=unreadable)
    if failures:
        readable = [i for i, w in enumerate(waves) if w is not None]
        n_all, ds, waves = len(ds), ds.select(readable), [waves[i] for i in readable]
        cid, why = failures[0]
        need = max(2, cfg.folds)
        n_cur = sum(s != "noisy" for s in ds.subsets)
        if n_cur < need:
            raise DataError(f"dataset {ds.root}: {len(failures)} of {n_all} training files are unreadable (first: "
                            f"{cid}: {why}); {n_cur} curated clips are left, fine-tuning needs at least {need}")
        if console is not None:
            console.print(f"[yellow]{len(failures)} of {n_all} training files are unreadable and left out "
                          f"(first: {cid}: {why})[/]", highlight=False, soft_wrap=True)
    unreadable_ids = [{"clip_id": c, "reason": r} for c, r in failures]
    if ck is not None and started is not None and started.get("unreadable", unreadable_ids) != unreadable_ids:
        raise IncompatibleError(f"{out}: the files that cannot be read are not those the interrupted run left out "
                                "(see its run.json); --resume needs the same clips")
    _write_json(run_path, {**identity, "unreadable": unreadable_ids})
    Y = ds.multi_hot()
    noisy = np.array([s == "noisy" for s in ds.subsets], bool)
    curated_idx = np.flatnonzero(~noisy)
    if len(curated_idx) == 0:
        raise DataError(f"dataset {ds.root}: no curated (or subset-less) clips to validate and train stage 2 on")
    n_folds = max(cfg.folds, 1)
    fold_of = np.full(len(ds), -1, int)
    if cfg.folds >= 2:
        fold_of[curated_idx] = stratified_folds(Y[curated_idx], cfg.folds, cfg.seed)

    history: list[dict] = list(ck["history"]) if ck else []
    start_fold = int(ck["fold"]) if ck else 0
    oof = np.full(Y.shape, np.nan, np.float32)
    fold_scores: list[float] = []
    for k in range(start_fold):  # folds finished before an interruption
        o = load_file(str(out / f"fold{k}" / "oof.safetensors"))
        if len(o["index"]):
            oof[o["index"].numpy()] = o["probs"].numpy()
            fold_scores.append(lwlrap(Y[o["index"].numpy()], o["probs"].numpy()))

    for k in range(start_fold, n_folds):
        fold_dir = out / f"fold{k}"
        fold_dir.mkdir(exist_ok=True)
        best_path = fold_dir / "best.safetensors"
        val_idx = np.flatnonzero(fold_of == k) if cfg.folds >= 2 else np.zeros(0, int)
        train_idx = np.flatnonzero(fold_of != k) if cfg.folds >= 2 else np.arange(len(ds))
        here = ck if (ck is not None and int(ck["fold"]) == k) else None
        model = FinetuneNet(len(ds.vocabulary), spec.options.get("width_mult", 0.4), seed=cfg.seed * 1000 + k)
        if here is not None and here.get("model") is not None:
            model.load_state_dict(here["model"])
        else:
            model.load_pretrained(weights_path)
        model = model.to(dev)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        best = float(here["best"]) if here else -1.0
        stage0 = int(here["stage"]) if here else 0

        for si, stage in enumerate(cfg.stages):
            if si < stage0:
                continue
            resumed = here is not None and si == stage0
            e0 = int(here["epoch"]) if resumed else 0
            bad = int(here["bad"]) if resumed else 0
            stopped = bool(here["stopped"]) if resumed else False
            opt = torch.optim.AdamW(model.param_groups(cfg.lr, cfg.layer_decay, cfg.weight_decay))
            scaler = torch.amp.GradScaler("cuda", enabled=cuda)
            if resumed and e0 > 0 and here.get("optimizer") is not None:
                opt.load_state_dict(here["optimizer"])
                if here.get("scaler"):
                    scaler.load_state_dict(here["scaler"])
            items = _epoch_items(stage, train_idx, noisy, cfg)
            n_epochs = cfg.epochs[si]
            steps = max(1, len(items) // cfg.batch_size)  # the last partial batch is dropped (BatchNorm)
            total = steps * n_epochs
            for epoch in range(e0, n_epochs):
                if stopped:
                    break
                model.train()
                if cfg.freeze_bn:
                    for m in model.modules():
                        if isinstance(m, torch.nn.BatchNorm2d):
                            m.eval()
                order = np.random.default_rng([cfg.seed, k, si, epoch]).permutation(items)
                t0, loss_sum, seen = time.perf_counter(), 0.0, 0
                bar = _progress_bar(console, f"fold {k + 1}/{n_folds} {stage} epoch {epoch + 1}/{n_epochs}", steps)
                try:
                    for step in range(steps):
                        rng = np.random.default_rng([cfg.seed, k, si, epoch, step])
                        torch.manual_seed(int(rng.integers(2 ** 62)))
                        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                        f = _lr_factor(epoch * steps + step, total, cfg.warmup_frac)
                        for g in opt.param_groups:
                            g["lr"] = g["base_lr"] * f
                        loss = _train_step(model, opt, scaler, waves, Y, noisy, idx, crop_n, cfg, rng, dev, train_crop,
                                           multi_label)
                        loss_sum += loss * len(idx)
                        seen += len(idx)
                        if bar is not None:
                            bar[0].update(bar[1], advance=1, description=bar[2] + f" loss {loss:.4f}")
                        if on_step is not None:
                            on_step(k, si, epoch, step)
                finally:
                    if bar is not None:
                        bar[0].stop()
                train_s = time.perf_counter() - t0
                val = float("nan")
                if len(val_idx):
                    p = predict_waves([model], [waves[i] for i in val_idx], crop_n, cfg.tta_crops, dev,
                                      cfg.batch_size, softmax=not multi_label)
                    val = lwlrap(Y[val_idx], p)
                    if val > best:
                        best, bad = val, 0
                        _save_safetensors(model.state_dict(), best_path)
                    else:
                        bad += 1
                        stopped = cfg.patience > 0 and bad >= cfg.patience
                row = {"fold": k, "stage": stage, "epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
                       "val_lwlrap": val, "lr": cfg.lr * _lr_factor(epoch * steps + steps - 1, total, cfg.warmup_frac),
                       "clips_per_s": seen / train_s, "seconds": time.perf_counter() - t0}
                history.append(row)
                if console is not None:
                    console.print(f"fold {k + 1}/{n_folds} {stage} epoch {epoch + 1}/{n_epochs}: loss "
                                  f"{row['loss']:.4f}  val lwlrap {val:.4f}  lr {row['lr']:.2e}  "
                                  f"{row['clips_per_s']:.1f} clips/s" + ("  (early stop)" if stopped else ""),
                                  highlight=False, soft_wrap=True)
                _save_checkpoint(ck_path, {"fold": k, "stage": si, "epoch": epoch + 1, "model": model.state_dict(),
                                           "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                                           "best": best, "bad": bad, "stopped": stopped, "history": history})
            # the next stage (and the fold's result) start from the best weights so far
            if cfg.select_best and len(val_idx) and best_path.exists():
                model.load_state_dict(load_file(str(best_path), device=dev))
            _save_checkpoint(ck_path, {"fold": k, "stage": si + 1, "epoch": 0, "model": model.state_dict(),
                                       "optimizer": None, "scaler": None, "best": best, "bad": 0, "stopped": False,
                                       "history": history})
        here = None

        _save_safetensors(model.state_dict(), fold_dir / "model.safetensors")
        probs = (predict_waves([model], [waves[i] for i in val_idx], crop_n, cfg.tta_crops, dev, cfg.batch_size,
                               softmax=not multi_label)
                 if len(val_idx) else np.zeros((0, len(ds.vocabulary)), np.float32))
        _save_safetensors({"index": torch.from_numpy(val_idx.astype(np.int64)), "probs": torch.from_numpy(probs)},
                          fold_dir / "oof.safetensors")
        if len(val_idx):
            oof[val_idx] = probs
            fold_scores.append(lwlrap(Y[val_idx], probs))
        best_path.unlink(missing_ok=True)
        _save_checkpoint(ck_path, {"fold": k + 1, "stage": 0, "epoch": 0, "model": None, "optimizer": None,
                                   "scaler": None, "best": -1.0, "bad": 0, "stopped": False, "history": history})
        ck = None

    scored = ~np.isnan(oof[:, 0])
    cv = lwlrap(Y[scored], oof[scored]) if scored.any() else None
    # decision thresholds as a head's (embedtag.heads.thresholds), on the only predictions of clips a fold did not
    # train on: the out-of-fold validation ones. Without validation clips there is nothing honest to fit them on.
    thresholds, threshold_metrics_ = None, None
    if scored.any():
        from embedtag.heads.thresholds import decide, fit_thresholds, threshold_metrics

        thresholds = [float(t) for t in fit_thresholds(Y[scored], oof[scored])]
        m = threshold_metrics(Y[scored], decide(oof[scored], thresholds, multi_label))
        threshold_metrics_ = {k: m[k] for k in ("micro_precision", "micro_recall", "micro_f1", "macro_f1")}
        thresholds_from = f"out-of-fold validation predictions of {int(scored.sum())} curated clips ({n_folds} folds)"
    else:
        thresholds_from = "none: the run has no validation clips (folds=0); --threshold auto uses 0.5"
    _write_log(out / "log.csv", history)
    if history:
        _plot(history, out / "training.png")
    if scored.any():
        import pandas as pd

        frame = pd.DataFrame(oof[scored], columns=ds.vocabulary)
        frame.insert(0, "fname", [ds.clip_ids[i] for i in np.flatnonzero(scored)])
        frame.to_csv(out / "oof.csv", index=False, float_format="%.6g")
    from embedtag.embeddings.weights import fingerprint

    config = {
        **artifacts.header(artifacts.RUN, FORMAT_VERSION), "backbone": cfg.backbone,
        "width_mult": spec.options.get("width_mult", 0.4), "vocabulary": list(ds.vocabulary),
        "multi_label": multi_label, "output": "sigmoid" if multi_label else "softmax", "thresholds": thresholds,
        "thresholds_from": thresholds_from, "threshold_metrics": threshold_metrics_,
        "front_end": model.front_end.config.as_dict(), "crop_s": cfg.crop_s,
        "tta_crops": cfg.tta_crops, "models": [f"fold{k}/model.safetensors" for k in range(n_folds)],
        "cv_lwlrap": cv, "fold_lwlrap": fold_scores, "train": cfg.as_dict(), "identity": identity,
        "dataset": str(ds.root), "clips": {"curated": int((~noisy).sum()), "noisy": int(noisy.sum())},
        "skipped_stages": skipped, "unreadable": unreadable_ids, "train_clip_ids": list(ds.clip_ids),
        "pretrained_weights_sha256": fingerprint(weights_path), "device": dev, "note": PRETRAINING_NOTE,
    }
    _write_json(out / "config.json", config)
    ck_path.unlink(missing_ok=True)
    return FinetuneResult(out, cv, fold_scores, history, config, failures)


def _train_step(model, opt, scaler, waves, Y, noisy, idx, crop_n, cfg, rng, dev, train_crop,
                multi_label: bool = True) -> float:
    import torch
    import torch.nn.functional as F

    from embedtag.embeddings.backbones._torch_util import autocast, to_device

    cuda = dev.startswith("cuda")
    x = to_device(np.stack([train_crop(waves[i], crop_n, rng) for i in idx]), dev)
    y = torch.from_numpy(Y[idx]).to(dev)
    nz = torch.from_numpy(noisy[idx].astype(np.float32)).to(dev)
    w = torch.where(nz > 0, cfg.noisy_weight if cfg.noisy_loss == "weighted" else 1.0, 1.0)
    mel = model.mel(x)
    if cfg.mixup_alpha > 0:
        lam = float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha))
        perm = torch.from_numpy(rng.permutation(len(idx))).to(dev)
        mel = lam * mel + (1 - lam) * mel[perm]
        y, w, nz = (lam * t + (1 - lam) * t[perm] for t in (y, w, nz))
    mel = _spec_augment(mel, cfg, rng)
    if cuda:
        mel = mel.contiguous(memory_format=torch.channels_last)
    with autocast(dev, True):
        logits = model.forward_mel(mel)
    logits = logits.float()
    if cfg.noisy_loss == "lsoft":
        # soft bootstrapping: noisy targets move toward the model's own belief by (1 - beta)
        keep = (nz * (1 - cfg.lsoft_beta))[:, None]
        belief = torch.sigmoid(logits) if multi_label else torch.softmax(logits, 1)
        y = y * (1 - keep) + keep * belief.detach()
    if multi_label:
        per_clip = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)
    else:  # one class per clip: softmax cross-entropy (soft targets after mixup / Lsoft still sum to 1)
        per_clip = -(y * F.log_softmax(logits, 1)).sum(1)
    loss = (per_clip * w).mean()
    if not torch.isfinite(loss):
        raise EmbedtagError("fine-tuning diverged (non-finite loss); lower --lr")
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return float(loss.detach())


def _progress_bar(console, description: str, total: int):
    if console is None:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                 console=console, transient=True)
    p.start()
    return p, p.add_task(description, total=total), description


def _write_log(path: Path, history: list[dict]) -> None:
    def write(p):
        with open(p, "w", newline="") as f:
            wr = csv.DictWriter(f, LOG_COLUMNS)
            wr.writeheader()
            for r in history:
                wr.writerow({c: r[c] for c in LOG_COLUMNS})

    atomic_write(path, write)


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    # same types as a live run's history
    return [{c: (r[c] if c == "stage" else int(r[c]) if c in ("fold", "epoch") else float(r[c])) for c in LOG_COLUMNS}
            for r in rows]
