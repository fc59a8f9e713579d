"""Heads on real audio: every labelled dataset in ../shared/data embedded with real YAMNet, cross-validated.

Three tables:

1. **Heads vs baselines** per dataset: 5-fold (multi-label stratified) CV lwlrap of the label-prior
   (majority-class) baseline, the zero-shot baseline (AudioSet scores mapped to the labels by name, no training;
   its label coverage is given), plain standardised logistic regression (C=1), LightGBM, kNN, the default MLP and
   a tuned MLP (its configuration chosen inside each outer training fold by an inner 3-fold CV over a small grid,
   so the outer score stays honest).
   ``dcase_mix2`` is a multi-label set built from real audio: the 220 DCASE office clips are paired (disjoint
   pairs, two different classes), the two waveforms are summed, and the clip gets the union of both labels.
2. **Noisy labels**: the real clips of four datasets (DCASE office, oddball sounds, Sonic Pi families, glass
   break; 34 labels) are split into a small clean subset (25%) and a large "noisy" one (75%) whose labels are
   corrupted at 20 / 40 / 60 % of clips (half of those get a wrong label instead of theirs, half get an extra
   wrong label). Each strategy is compared with plain pooling and with the clean subset alone, in 5-fold CV over
   the clean clips only; noisy clips only ever train. Averaged over ``--seeds`` corruption draws.

    python -m benchmarks.heads_real [--stores DIR] [--folds 5] [--seeds 2] [--skip-heads] [--skip-noisy]
                                    [--datasets NAME ...]   # a subset: printed, not saved

Writes benchmarks/results/heads_real.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from embedtag.heads import cross_validate, labels_for_store, make_head, zero_shot_store
from embedtag.heads.training import stratified_folds
from embedtag.metrics import lwlrap

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMBEDTAG_SHARED", REPO.parent / "shared"))
RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ["dcase2016_task2_office", "goldlab_oddball_novel_sounds", "sonicpi_samples", "edgeimpulse_glass_break",
            "donateacry_cleaned"]

PLAIN_LOGREG = {"C": 1.0, "max_iter": 500}
HEADS = {
    "logreg (plain, C=1)": ("logreg", PLAIN_LOGREG),
    "lightgbm": ("lightgbm", {"n_estimators": 100, "num_leaves": 7, "feature_fraction": 0.3}),
    "knn": ("knn", {"k": 10}),
    "mlp (default)": ("mlp", {}),
    # fit-head's default: picks among logreg (C on inner folds), mlp, knn (and lightgbm from 1000 clips) by an
    # inner CV inside each outer training fold, so its outer score is as honest as the others'
    "auto": ("auto", {}),
}
# Small-data MLPs did better without batch norm and trained for a fixed number of epochs on all the fold's
# clips than with early stopping on a 15% split of ~150 clips (too few to rank epochs reliably).
_NOBN = {"batch_norm": False, "validation_fraction": 0.0}
MLP_GRID = [
    {"hidden": [512], "dropout": 0.5, "epochs": 40, **_NOBN},
    {"hidden": [1024], "dropout": 0.6, "epochs": 60, **_NOBN},
    {"hidden": [256], "dropout": 0.3, "epochs": 30, "weight_decay": 1e-2, **_NOBN},
    {"hidden": [1024], "dropout": 0.7, "epochs": 80, "lr": 5e-4, **_NOBN},
]


# ------------------------------------------------------------------------------------------------ data
def store_for(name: str, stores: Path):
    from embedtag.embeddings.pipeline import extract
    from embedtag.store import open_store

    out = stores / name
    if not (out / "manifest.json").exists():
        src = stores / "_mix2" if name == "dcase_mix2" else SHARED / "data" / name
        if name == "dcase_mix2":
            make_mixtures(src)
        extract(src, out, model="yamnet", progress=False)
    return open_store(out)


def make_mixtures(out: Path, seed: int = 0) -> None:
    """Disjoint pairs of DCASE office clips of different classes, waveforms summed, labels unioned."""
    import soundfile as sf

    from embedtag.datasets import load_dataset
    from embedtag.embeddings.audio import load_audio

    ds = load_dataset(SHARED / "data" / "dcase2016_task2_office")
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(ds)))
    pairs = []
    while len(order) >= 2:
        a = order.pop()
        j = next((k for k in range(len(order)) if ds.labels[order[k]] != ds.labels[a]), None)
        if j is None:
            break
        pairs.append((a, order.pop(j)))
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lines = ["fname,labels"]
    for n, (a, b) in enumerate(pairs):
        xa, sr = load_audio(ds.paths[a], 16000)
        xb, _ = load_audio(ds.paths[b], 16000)
        mix = np.zeros(max(len(xa), len(xb)), np.float32)
        mix[:len(xa)] += xa / (np.abs(xa).max() + 1e-9)  # equal peak levels, so neither event is buried
        mix[:len(xb)] += xb / (np.abs(xb).max() + 1e-9)
        mix *= 0.9 / (np.abs(mix).max() + 1e-9)
        name = f"mix{n:03d}.wav"
        sf.write(out / "audio" / name, mix, sr, subtype="PCM_16")
        labels = sorted(set(ds.labels[a]) | set(ds.labels[b]))
        lines.append(f'{name},"{",".join(labels)}"')
    (out / "labels.csv").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------ heads
def tuned_mlp_cv(X, Y, folds: int, seed: int, multi_label: bool):
    """Outer CV of an MLP whose config is picked per outer fold by inner 3-fold CV on that fold's training data."""
    fold_of = stratified_folds(Y, folds, seed)
    oof = np.zeros_like(Y)
    picks = []
    for k in range(folds):
        tr, te = fold_of != k, fold_of == k
        scores = [cross_validate(lambda g=g: make_head("mlp", **g, multi_label=multi_label, seed=seed), X[tr], Y[tr],
                                 folds=3, seed=seed + 1).lwlrap for g in MLP_GRID]
        best = int(np.argmax(scores))
        picks.append(best)
        head = make_head("mlp", **MLP_GRID[best], multi_label=multi_label, seed=seed).fit(X[tr], Y[tr])
        oof[te] = head.predict_proba(X[te])
    return lwlrap(Y, oof), picks


def heads_table(stores: Path, datasets: list[str], folds: int, seed: int) -> list[dict]:
    rows = []
    for name in datasets:
        store = store_for(name, stores)
        Y, vocab, _, labelled = labels_for_store(store)
        X, Y = store.embeddings()[labelled], Y[labelled]
        multi = bool((Y.sum(1) != 1).any())
        row = {"dataset": name, "clips": len(X), "labels": len(vocab), "multi_label": multi, "lwlrap": {},
               "time_s": {}}
        prior = cross_validate(lambda: make_head("prior", multi_label=multi), X, Y, folds=folds, seed=seed)
        row["lwlrap"]["prior"] = prior.lwlrap
        zs, mapping = zero_shot_store(store, vocab)
        row["lwlrap"]["zero-shot"] = lwlrap(Y, zs[labelled])
        row["zero_shot_coverage"] = f"{sum(bool(v) for v in mapping.values())}/{len(vocab)}"
        row["zero_shot_mapping"] = mapping
        for label, (kind, params) in HEADS.items():
            start = time.perf_counter()
            res = cross_validate(lambda: make_head(kind, **params, multi_label=multi, seed=seed), X, Y, folds=folds,
                                 seed=seed)
            row["lwlrap"][label] = res.lwlrap
            row["time_s"][label] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        row["lwlrap"]["mlp (tuned)"], picks = tuned_mlp_cv(X, Y, folds, seed, multi)
        row["time_s"]["mlp (tuned)"] = round(time.perf_counter() - start, 1)
        row["mlp_tuned_picks"] = [MLP_GRID[p] for p in picks]
        rows.append(row)
        print(name, {k: round(v, 4) for k, v in row["lwlrap"].items()}, flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ noisy labels
NOISY_DATASETS = ["dcase2016_task2_office", "goldlab_oddball_novel_sounds", "sonicpi_samples",
                  "edgeimpulse_glass_break"]
STRATEGIES = {
    "clean only": ({}, {"noisy_weight": 0.0}),
    "pool (weight 1)": ({}, {"noisy_weight": 1.0}),
    "noisy_weight 0.3": ({}, {"noisy_weight": 0.3}),
    "confidence weight": ({}, {"confidence": "weight"}),
    "confidence drop (<0.3)": ({}, {"confidence": "drop", "confidence_threshold": 0.3}),
    "Lsoft beta 0.7 (mlp)": ({"bootstrap_beta": 0.7}, {}),
    "label smoothing 0.1 (mlp)": ({"label_smoothing": 0.1}, {}),
}
# early stopping on the clean clips of the training folds, batch norm on (the MLP's defaults before they changed)
NOISY_HEADS = {"logreg": {"C": 0.1},
               "mlp": {"hidden": [512], "dropout": 0.5, "batch_norm": True, "epochs": 100, "min_validation_clips": 5}}


def corrupt(Y: np.ndarray, rate: float, rng) -> np.ndarray:
    """``rate`` of the rows get noise: half a wrong label instead of theirs, half an extra wrong label."""
    Yn = Y.copy()
    n, L = Y.shape
    hit = np.flatnonzero(rng.random(n) < rate)
    for i in hit:
        wrong = rng.choice(np.flatnonzero(Y[i] == 0))
        if rng.random() < 0.5:
            Yn[i] = 0
        Yn[i, wrong] = 1
    return Yn


def noisy_table(stores: Path, folds: int, seeds: int, rates=(0.2, 0.4, 0.6), clean_fraction: float = 0.25):
    Xs, label_lists = [], []
    for name in NOISY_DATASETS:
        store = store_for(name, stores)
        Y, vocab, _, labelled = labels_for_store(store)
        Xs.append(store.embeddings()[labelled])
        label_lists += [[f"{name.split('_')[0]}:{vocab[j]}" for j in np.flatnonzero(y)] for y in Y[labelled]]
    from embedtag.datasets import to_multi_hot

    X = np.concatenate(Xs)
    vocab = sorted({lab for labs in label_lists for lab in labs})
    Y = to_multi_hot(label_lists, vocab)
    out = {"clips": len(X), "labels": len(vocab), "clean_fraction": clean_fraction, "results": []}
    for rate in rates:
        for seed in range(seeds):
            rng = np.random.default_rng(100 + seed)
            clean = np.zeros(len(X), bool)
            # a stratified clean subset: one fold of a 4-fold split
            clean[stratified_folds(Y, int(round(1 / clean_fraction)), seed) == 0] = True
            Yn = np.where(clean[:, None], Y, corrupt(Y, rate, rng))
            subset = np.where(clean, "curated", "noisy").astype(object)
            for head_kind, base in NOISY_HEADS.items():
                for strat, (head_extra, train_kw) in STRATEGIES.items():
                    if head_extra and head_kind != "mlp":
                        continue
                    res = cross_validate(lambda: make_head(head_kind, **base, **head_extra, seed=seed), X, Yn,
                                         subset=subset, folds=folds, seed=seed, **train_kw)
                    out["results"].append({"noise_rate": rate, "seed": seed, "head": head_kind, "strategy": strat,
                                           "lwlrap": res.lwlrap})
            print(f"noise {rate} seed {seed} done", flush=True)
    return out


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", type=Path, default=Path(tempfile.gettempdir()) / "embedtag_bench_stores")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-heads", action="store_true")
    ap.add_argument("--skip-noisy", action="store_true")
    ap.add_argument("--datasets", nargs="+", help="Only these datasets of the heads table (printed, not saved).")
    args = ap.parse_args()
    os.environ.setdefault("EMBEDTAG_WEIGHTS_DIR", str(SHARED / "models"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args.stores.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "heads_real.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update({"benchmark": "heads_real", "backbone": "yamnet (real weights, TF SavedModel), mean pooling",
                   "folds": args.folds})
    if args.datasets:
        print_tables({"heads": heads_table(args.stores, args.datasets, args.folds, args.seed)})
        return
    path.write_text(json.dumps(result, indent=2))
    if not args.skip_heads:
        result = save_section(path, "heads", heads_table(args.stores, DATASETS + ["dcase_mix2"], args.folds,
                                                          args.seed))
    if not args.skip_noisy:
        result = save_section(path, "noisy", noisy_table(args.stores, args.folds, args.seeds))
    print_tables(result)


def save_section(path: Path, key: str, value) -> dict:
    """Re-read the results file and replace one section, so that runs of the two parts do not erase each other."""
    import subprocess

    result = json.loads(path.read_text()) if path.exists() else {}
    result[key] = value
    # a section rerun alone (--skip-noisy / --skip-heads) is newer than the file's run stamp: say which code made it
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    result.setdefault("sections", {})[key] = {"commit": commit or "unknown",
                                              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_text(json.dumps(result, indent=2))
    return result


def print_tables(result: dict) -> None:
    if "heads" in result:
        cols = ["prior", "zero-shot", *HEADS, "mlp (tuned)"]
        missing = [c for c in cols if not any(c in r["lwlrap"] for r in result["heads"])]
        if missing:  # results from before a head was added: say so rather than fail
            print(f"\n{', '.join(missing)}: not in these results yet (rerun `python -m benchmarks.heads_real`).")
            cols = [c for c in cols if c not in missing]
        print("\n| dataset | clips | labels | " + " | ".join(cols) + " |")
        print("|---|---|---|" + "---|" * len(cols))
        for r in result["heads"]:
            best = max(v for k, v in r["lwlrap"].items())
            cells = [("n/a" if c not in r["lwlrap"] else
                      f"**{r['lwlrap'][c]:.3f}**" if r["lwlrap"][c] == best else f"{r['lwlrap'][c]:.3f}")
                     + (f" ({r['zero_shot_coverage']})" if c == "zero-shot" else "") for c in cols]
            kind = "multi" if r["multi_label"] else "single"
            print(f"| {r['dataset']} | {r['clips']} | {r['labels']} ({kind}) | " + " | ".join(cells) + " |")
    if "noisy" in result:
        rs = result["noisy"]["results"]
        rates = sorted({r["noise_rate"] for r in rs})
        print(f"\nnoisy labels: {result['noisy']['clips']} clips, {result['noisy']['labels']} labels, "
              f"clean fraction {result['noisy']['clean_fraction']}; CV lwlrap on clean clips, mean over seeds")
        print("\n| head | strategy | " + " | ".join(f"{int(r * 100)}% noisy" for r in rates) + " |")
        print("|---|---|" + "---|" * len(rates))
        for head in NOISY_HEADS:
            for strat in STRATEGIES:
                vals = [[r["lwlrap"] for r in rs if r["head"] == head and r["strategy"] == strat
                         and r["noise_rate"] == rate] for rate in rates]
                if all(vals):
                    print(f"| {head} | {strat} | " + " | ".join(f"{np.mean(v):.3f}" for v in vals) + " |")


if __name__ == "__main__":
    main()
