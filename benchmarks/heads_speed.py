"""Fit time and predict throughput of every head at FSDKaggle2019 scale: 25,000 clips x 2048 dims, 80 labels.

The data are SYNTHETIC (no FSDKaggle2019 audio here): each clip has 1-2 labels drawn with a long-tailed
frequency, and its embedding is the sum of its labels' random prototype vectors, plus label-independent
"nuisance" variation confined to 128 random directions (pooled CNN embeddings keep most of their variance in a
few hundred directions), plus weak isotropic noise, at a signal-to-noise chosen so that heads land at a held-out
lwlrap well below 1, not on a trivially separable set. The label-prior baseline is given for reference.
Fit times depend on the data only through convergence, so they are indicative, not exact, for real embeddings.

LightGBM trains one booster per label, on the first 256 principal components of the embeddings
(``n_components=256``; the PCA is included in the fit time). With ``--lgbm-labels K`` < 80 it is timed on 1 and
on K labels and the per-label cost is extrapolated to 80 labels, which the JSON then states; by default all 80
are trained. The MLP and LightGBM run on one thread (``n_threads=1`` / ``n_jobs=1``): on the shared, busy 2-core
machine their OpenMP pools of 2 threads were 2-50x slower than one thread. Logistic regression fits its 80
one-vs-rest problems on 2 joblib threads, each with single-threaded BLAS.

    python -m benchmarks.heads_speed [--clips 25000] [--dim 2048] [--labels 80]

Writes benchmarks/results/heads_speed.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from embedtag.heads import make_head
from embedtag.metrics import lwlrap

RESULTS = Path(__file__).resolve().parent / "results"
GOALS_S = {"logreg": 60, "mlp": 60, "lightgbm": 600, "auto": 120}


def synthetic(n: int, dim: int, n_labels: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, n_labels + 1) ** 0.5  # long-tailed label frequencies, as in FSDKaggle2019
    freq /= freq.sum()
    Y = np.zeros((n, n_labels), np.float32)
    first = rng.choice(n_labels, n, p=freq)
    Y[np.arange(n), first] = 1
    second = rng.random(n) < 0.25
    Y[np.flatnonzero(second), rng.choice(n_labels, second.sum(), p=freq)] = 1
    protos = rng.normal(size=(n_labels, dim)).astype(np.float32)
    nuisance = rng.normal(size=(128, dim)).astype(np.float32)
    X = (Y @ protos * 0.25 + rng.normal(size=(n, 128)).astype(np.float32) @ nuisance * 0.7
         + rng.normal(size=(n, dim)).astype(np.float32) * 1.5)
    return X.astype(np.float32), Y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=25000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--labels", type=int, default=80)
    ap.add_argument("--test-clips", type=int, default=5000)
    ap.add_argument("--lgbm-labels", type=int, default=80)
    ap.add_argument("--heads", default="prior,logreg,mlp,knn,lightgbm,auto")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    X, Y = synthetic(args.clips + args.test_clips, args.dim, args.labels)
    Xtr, Ytr, Xte, Yte = X[:args.clips], Y[:args.clips], X[args.clips:], Y[args.clips:]
    configs = {
        "logreg": {"C": 0.1, "max_iter": 100, "n_jobs": 2},
        "mlp": {"hidden": [256], "epochs": 40, "patience": 5, "batch_size": 512, "lr": 2e-3, "n_threads": 1},
        "knn": {"k": 10},
        # fit-head's default, as a user gets it: inner CV on a sample of 2,000 clips, then the refit on all
        "auto": {},
        "prior": {},
        "lightgbm": {"n_estimators": 100, "num_leaves": 15, "feature_fraction": 0.5, "subsample": 0.5,
                     "max_bin": 63, "n_components": 256, "n_jobs": 1},
    }
    rows = []
    for kind in args.heads.split(","):
        params = configs[kind]
        note = ""
        if kind == "lightgbm" and args.lgbm_labels < args.labels:
            # boosters are independent per label; the binning of X is shared: time 1 label and k labels, then
            # fit time(80) = time(1) + (80 - 1) * per-label cost
            k = args.lgbm_labels
            start = time.perf_counter()
            make_head(kind, **params).fit(Xtr, Ytr[:, :1])
            one = time.perf_counter() - start
            start = time.perf_counter()
            head = make_head(kind, **params).fit(Xtr, Ytr[:, :k])
            measured = time.perf_counter() - start
            per_label = (measured - one) / (k - 1)
            fit_s = one + (args.labels - 1) * per_label
            note = (f"timed on 1 label ({one:.0f} s, binning included) and {k} labels ({measured:.0f} s); "
                    f"extrapolated to {args.labels} at {per_label:.1f} s/label")
            Yeval = Yte[:, :k]
        else:
            start = time.perf_counter()
            head = make_head(kind, **params).fit(Xtr, Ytr)
            fit_s = time.perf_counter() - start
            Yeval = Yte
        start = time.perf_counter()
        P = head.predict_proba(Xte)
        pred_s = time.perf_counter() - start
        keep = Yeval.sum(1) > 0
        row = {"head": kind, "params": params, "fit_s": round(fit_s, 1),
               "predict_clips_per_s": round(len(Xte) / pred_s), "heldout_lwlrap": round(lwlrap(Yeval[keep],
                                                                                              P[keep]), 4),
               "goal_fit_s": GOALS_S.get(kind), "note": note}
        if kind == "mlp":
            row["epochs_run"] = head.metrics.get("epochs_run")
        if kind == "auto":
            row["auto"] = head.metrics["auto"]
            row["note"] = f"chose {row['auto']['chosen']} (inner CV on {row['auto']['selection_clips']} clips)"
        rows.append(row)
        print(f"{kind}: fit {fit_s:.1f} s, predict {row['predict_clips_per_s']} clips/s, "
              f"held-out lwlrap {row['heldout_lwlrap']} {note}", flush=True)

    out = {"benchmark": "heads_speed", "data": f"synthetic, {args.clips} train + {args.test_clips} test clips x "
                                               f"{args.dim} dims, {args.labels} labels (1-2 per clip)",
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared)",
           # other jobs share these cores: a 1-minute load average of 6 on 2 CPUs means ~1/3 of the CPU for us
           "load_average_1min": {"start": round(load_before, 1), "end": round(os.getloadavg()[0], 1)},
           "results": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "heads_speed.json").write_text(json.dumps(out, indent=2))
    print("\n| head | fit time (s) | goal (s) | predict (clips/s) | held-out lwlrap | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['head']} | {r['fit_s']} | {r['goal_fit_s'] or '-'} | {r['predict_clips_per_s']} | "
              f"{r['heldout_lwlrap']} | {r['note']} |")


if __name__ == "__main__":
    main()
