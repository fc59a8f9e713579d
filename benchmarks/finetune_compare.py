"""Fine-tuning EfficientAT mn04 end to end vs a head on its frozen embeddings, same folds, real audio, CPU.

Both sides see the same multi-label-stratified K folds of a real dataset from ../shared/data:

* **frozen**: clip embeddings (384-d, mean over windows) from ``efficientat-mn04``, then the default MLP head
  and a plain logistic regression, cross-validated with ``embedtag.heads.cross_validate`` on those folds;
* **fine-tuned**: ``embedtag.finetune.finetune`` (stage "curated" only: the dataset has no noisy subset), a fixed
  number of epochs and the *last* epoch's weights per fold (``select_best=False``, ``patience=0``), so the
  out-of-fold lwlrap is not chosen on the validation fold. The best-epoch figure (optimistic: picked on the
  validation fold) is reported beside it. Two settings, "heavy-aug" and "small-data" (see ``SETTINGS_NOTE``).

Both start from AudioSet-pretrained weights, which the FSDKaggle2019 competition did not allow.

    python -m benchmarks.finetune_compare                       # every run of DEFAULT_RUNS (make bench)
    python -m benchmarks.finetune_compare --dataset sonicpi_samples --epochs 20 [--settings small-data]
                                          [--folds 5] [--threads 1] [--work DIR]

Writes benchmarks/results/finetune_compare.json (a plain run replaces it; ``--dataset`` merges its one entry)
and prints a markdown table per run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMBEDTAG_SHARED", REPO.parent / "shared"))
RESULTS = Path(__file__).resolve().parent / "results"
#: fine-tuning settings compared (besides the shared ones: curated stage, fixed epochs, last-epoch weights)
FT_SETTINGS = {
    "heavy-aug": {"lr": 1e-3, "freeze_bn": False, "mixup_alpha": 0.3, "freq_masks": 2, "time_masks": 2},
    "small-data": {"lr": 3e-3, "freeze_bn": True, "mixup_alpha": 0.0, "freq_masks": 1, "time_masks": 1},
}
SETTINGS_NOTE = ("'heavy-aug' (lr 1e-3, mixup 0.3, 2 frequency + 2 time masks, BatchNorm statistics updated) were "
                 "FinetuneConfig's first defaults. 'small-data' (lr 3e-3, pretrained BatchNorm statistics kept, no "
                 "mixup, 1 + 1 masks; FinetuneConfig's defaults since) was picked from 7 variants (8 epochs) by "
                 "their validation lwlrap on fold 0 of dcase2016_task2_office, so on that dataset it carries a mild "
                 "selection bias; sonicpi_samples was not used to choose it.")


#: what a plain run (``make bench``) measures: (dataset, epochs, settings); the results file is then replaced
DEFAULT_RUNS = [("dcase2016_task2_office", 8, "heavy-aug,small-data"), ("sonicpi_samples", 8, "heavy-aug,small-data"),
                ("sonicpi_samples", 20, "small-data"), ("dcase2016_task2_office", 20, "small-data")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=None, help="one dataset (merged into the results file); default: all of "
                    "DEFAULT_RUNS, replacing the file")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8, help="with --dataset")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--crop-s", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    ap.add_argument("--settings", default=",".join(FT_SETTINGS), help="fine-tuning settings to run: "
                    + ", ".join(FT_SETTINGS))
    ap.add_argument("--work", type=Path, default=None, help="where the run directory goes (default: a temp dir)")
    args = ap.parse_args()
    path = RESULTS / "finetune_compare.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.dataset is None:
        done: dict = {}
        for dataset, epochs, settings in DEFAULT_RUNS:
            key, result = run_one(args, dataset, epochs, settings)
            done[key] = result
            path.write_text(json.dumps({"datasets": done}, indent=1))  # after each: a crash keeps what finished
        return
    key, result = run_one(args, args.dataset, args.epochs, args.settings)
    # one entry per dataset and epochs: running another keeps the earlier ones
    previous = json.loads(path.read_text()).get("datasets", {}) if path.is_file() else {}
    previous[key] = result
    path.write_text(json.dumps({"datasets": previous}, indent=1))  # key: "<dataset> (<epochs> epochs)"


def run_one(args, dataset: str, epochs: int, settings: str) -> tuple[str, dict]:
    """Frozen heads and fine-tuning on one dataset; prints its table and returns (results key, result)."""
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("EMBEDTAG_WEIGHTS_DIR", str(SHARED / "models"))
    from safetensors.torch import load_file

    from embedtag.datasets import load_dataset
    from embedtag.embeddings.pipeline import encode
    from embedtag.finetune import finetune
    from embedtag.heads import cross_validate, make_head
    from embedtag.heads.training import stratified_folds

    ds = load_dataset(SHARED / "data" / dataset)
    Y = ds.multi_hot()
    fold_of = stratified_folds(Y, args.folds, args.seed)

    t0 = time.perf_counter()
    X = encode(ds.paths, model="efficientat-mn04", device="cpu", progress=True)
    embed_s = time.perf_counter() - t0
    frozen = {}
    for name, kind, params in [("MLP head (default)", "mlp", {"n_threads": args.threads}),
                               ("logistic regression (C=1)", "logreg", {"C": 1.0, "max_iter": 500})]:
        t = time.perf_counter()
        cv = cross_validate(lambda: make_head(kind, seed=args.seed, **params), X, Y, fold_ids=fold_of,
                            seed=args.seed)
        frozen[name] = {"cv_lwlrap": cv.lwlrap, "fold_lwlrap": cv.fold_lwlrap,
                        "train_s": round(time.perf_counter() - t, 1)}

    work = args.work or Path(tempfile.mkdtemp(prefix="finetune_compare_"))
    finetuned = {}
    for name in settings.split(","):
        extra = FT_SETTINGS[name]
        run = work / f"{dataset}_mn04_{name}_{epochs}ep"
        t = time.perf_counter()
        res = finetune(ds, backbone="efficientat-mn04", out=run, stages=("curated",), folds=args.folds,
                       epochs=epochs, batch_size=args.batch_size, crop_s=args.crop_s, seed=args.seed,
                       select_best=False, patience=0, device="cpu", threads=args.threads, resume=True,
                       progress=True, **extra)
        ft_s = time.perf_counter() - t
        # same folds on both sides: each fold's validation clips are exactly the heads' test fold
        for k in range(args.folds):
            idx = load_file(str(run / f"fold{k}" / "oof.safetensors"))["index"].numpy()
            assert set(idx.tolist()) == set(np.flatnonzero(fold_of == k).tolist()), f"fold {k} differs"
        hist = res.history
        per_epoch = [float(np.mean([float(r["val_lwlrap"]) for r in hist if int(r["epoch"]) == e]))
                     for e in range(1, epochs + 1)]
        best_epoch = int(np.argmax(per_epoch)) + 1
        finetuned[name] = {
            "cv_lwlrap_last_epoch": res.cv_lwlrap, "fold_lwlrap": res.fold_lwlrap,
            "mean_val_lwlrap_per_epoch": per_epoch, "best_epoch_optimistic": best_epoch,
            "best_epoch_mean_fold_lwlrap_optimistic": per_epoch[best_epoch - 1], "settings": res.config["train"],
            "epochs": epochs,
            "train_clips_per_s": round(float(np.mean([float(r["clips_per_s"]) for r in hist])), 1),
            "elapsed_s": round(ft_s, 1)}

    best_frozen = max(v["cv_lwlrap"] for v in frozen.values())
    best_ft = max(v["cv_lwlrap_last_epoch"] for v in finetuned.values())
    result = {
        "dataset": dataset, "clips": len(ds), "labels": len(ds.vocabulary), "folds": args.folds,
        "seed": args.seed, "device": "cpu", "torch_threads": args.threads, "machine": platform.processor() or
        platform.machine(), "note": "both sides start from AudioSet-pretrained EfficientAT mn04_as weights",
        "frozen_embedding": {"backbone": "efficientat-mn04", "embedding_dim": int(X.shape[1]),
                             "embed_s": round(embed_s, 1), "heads": frozen},
        "finetuned": finetuned, "settings_note": SETTINGS_NOTE,
        "gain_of_best_finetune_over_best_frozen_head": best_ft - best_frozen,
        "gpu_throughput": "not measured (no GPU in this session)",
    }
    print(f"\n### Fine-tuned mn04 vs frozen mn04 embeddings: {dataset} ({len(ds)} clips, "
          f"{len(ds.vocabulary)} labels, {args.folds}-fold CV, CPU)\n")
    print("| model | out-of-fold lwlrap | per-fold lwlrap | time (s) |")
    print("|---|---|---|---|")
    for name, v in frozen.items():
        print(f"| frozen mn04 embeddings + {name} | {v['cv_lwlrap']:.4f} | "
              f"{' '.join(f'{s:.3f}' for s in v['fold_lwlrap'])} | {embed_s:.0f} + {v['train_s']:.0f} |")
    for name, v in finetuned.items():
        print(f"| fine-tuned mn04, {name}, {epochs} epochs, last epoch | {v['cv_lwlrap_last_epoch']:.4f} | "
              f"{' '.join(f'{x:.3f}' for x in v['fold_lwlrap'])} | {v['elapsed_s']:.0f} |")
        print(f"| fine-tuned mn04, {name}, best epoch ({v['best_epoch_optimistic']}; chosen on the validation "
              f"folds: optimistic) | {v['best_epoch_mean_fold_lwlrap_optimistic']:.4f} (mean of folds) | | |")
    rate = np.mean([v["train_clips_per_s"] for v in finetuned.values()])
    print(f"\nfine-tuning throughput on CPU ({args.threads} thread): {rate:.1f} training clips/s "
          f"({args.crop_s:g} s crops); GPU throughput not measured in this session.\n\n{SETTINGS_NOTE}")
    return f"{dataset} ({epochs} epochs)", result


if __name__ == "__main__":
    main()
