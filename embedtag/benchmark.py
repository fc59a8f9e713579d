"""The whole pipeline on one dataset, measured: ``run_benchmark(data, out_dir, ...)``.

Stages: profile the dataset -> extract embeddings into ``OUT/store`` (resumable) -> cross-validated heads with each
noisy-label strategy (when the dataset has a noisy subset) beside the label-prior and zero-shot baselines -> an
optional fine-tune -> leave-one-out retrieval precision@k -> throughput and peak memory -> ``OUT/results.json`` and
the report (:func:`embedtag.report.write_report`). A stage that fails or cannot run becomes a "not run: <reason>"
section; the others still run.

Known datasets that are not on disk (``fsdkaggle2019``, ``esc50``) raise :class:`MissingDatasetError` saying what to
download and where to put it; once it is there the same command runs unchanged.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

from embedtag.errors import DataError, EmbedtagError
from embedtag.report import (
    classification_diagnostics,
    machine_info,
    not_run,
    peak_rss_mib,
    utc_now,
    versions,
    write_report,
)

__all__ = ["run_benchmark", "resolve_dataset", "MissingDatasetError", "KNOWN_DATASETS", "STRATEGIES", "DEFAULT_HEADS",
           "data_home"]


class MissingDatasetError(DataError):
    """A known dataset is not on disk; the message says what to download and where to put it."""


#: Datasets the benchmark knows by name: where to get them and the layout the files must have.
KNOWN_DATASETS: dict[str, dict] = {
    "fsdkaggle2019": {
        "aliases": ("fsdkaggle2019", "fsd-kaggle-2019", "freesound-audio-tagging-2019", "dcase2019-task2"),
        "url": "https://zenodo.org/record/3612637",
        "what": "FSDKaggle2019 (DCASE 2019 task 2)",
        "files": ("FSDKaggle2019.meta.zip, FSDKaggle2019.audio_train_curated.zip, "
                  "FSDKaggle2019.audio_train_noisy.zip (join its parts first if it comes split), "
                  "FSDKaggle2019.audio_test.zip"),
        "layout": ("the meta zip's *_post_competition.csv and vocabulary.csv files and the audio folders renamed "
                   "train_curated/, train_noisy/, test/"),
        "probe": "train_curated",  # the folder whose audio says the download is there
    },
    "esc50": {
        "aliases": ("esc50", "esc-50"),
        "url": "https://github.com/karolpiczak/ESC-50 (archive: https://github.com/karolpiczak/ESC-50/archive/master.zip)",
        "what": "ESC-50",
        "files": "the repository archive (about 600 MB)",
        "layout": "meta/esc50.csv and audio/*.wav (the contents of the archive's ESC-50-master/ folder)",
        "probe": "audio",
    },
}

#: Noisy-label strategies tried when the dataset has a noisy subset: name -> (train_head keywords, head params,
#: heads it applies to or None for all).
STRATEGIES: dict[str, tuple[dict, dict, tuple | None]] = {
    "curated only": ({"noisy_weight": 0.0}, {}, None),
    "pooled (noisy weight 1)": ({"noisy_weight": 1.0}, {}, None),
    "noisy weight 0.3": ({"noisy_weight": 0.3}, {}, None),
    "confidence weighting": ({"noisy_weight": 1.0, "confidence": "weight"}, {}, None),
    "confidence drop (< 0.5)": ({"noisy_weight": 1.0, "confidence": "drop", "confidence_threshold": 0.5}, {}, None),
    "Lsoft (beta 0.7)": ({"noisy_weight": 1.0}, {"bootstrap_beta": 0.7}, ("mlp",)),
    "label smoothing 0.1": ({"noisy_weight": 1.0}, {"label_smoothing": 0.1}, ("mlp",)),
}
#: heads benchmarked by default: ``auto`` beside the single heads it chooses among, so the report shows what the
#: choice costs or gains
DEFAULT_HEADS = ("logreg", "mlp", "auto")
#: the one strategy of a dataset without a noisy subset
PLAIN_STRATEGY = "all clips"
#: k values of the retrieval precision@k curve
RETRIEVAL_K = (1, 3, 5, 10, 20)
#: at most this many most-confused pairs are reported
CONFUSED_PAIRS = 15


def data_home() -> Path:
    """Where known datasets are looked for by name: ``$EMBEDTAG_DATA`` or ``$EMBEDTAG_HOME/data`` (default
    ``~/.cache/embedtag/data``)."""
    if os.environ.get("EMBEDTAG_DATA"):
        return Path(os.environ["EMBEDTAG_DATA"]).expanduser()
    from embedtag.embeddings.weights import home_dir

    return home_dir() / "data"


def _known(name: str) -> str | None:
    low = name.strip().lower().rstrip("/")
    base = Path(low).name
    for key, spec in KNOWN_DATASETS.items():
        if low in spec["aliases"] or base in spec["aliases"] or base.replace("-master", "") in spec["aliases"]:
            return key
    return None


def _missing_message(key: str, where: Path, why: str) -> str:
    spec = KNOWN_DATASETS[key]
    return (f"{spec['what']} is not available at {where} ({why}). Download {spec['files']} from {spec['url']} and "
            f"unpack it into {where} so that it holds {spec['layout']}; then run the same command again "
            f"(set EMBEDTAG_DATA to keep datasets elsewhere).")


def resolve_dataset(data: str | os.PathLike) -> Path:
    """The dataset folder for ``data``: an existing path, or a known dataset name (``fsdkaggle2019``, ``esc50``)
    looked up under :func:`data_home`. Raises :class:`MissingDatasetError` (what to download, where to put it)
    when a known dataset or its audio is missing, DataError for an unknown missing path."""
    p = Path(data).expanduser()
    key = _known(str(data))
    if p.exists():
        if key is None:
            # a FSDKaggle2019 folder with the metadata but without audio (e.g. FSDKaggle2019.meta)
            if any((p / n).is_file() for n in ("train_curated_post_competition.csv", "train_curated.csv")):
                key = "fsdkaggle2019"
            elif (p / "meta" / "esc50.csv").is_file():
                key = "esc50"
        if key is not None:
            from embedtag.inputs import walk_files

            sub = KNOWN_DATASETS[key]["probe"]
            if not (p / sub).is_dir() or not walk_files(p / sub, audio_only=True):
                raise MissingDatasetError(_missing_message(key, p, f"no audio in {p / sub}"))
        return p
    if key is not None:
        where = data_home() / key if len(Path(str(data)).parts) == 1 else p
        if where.exists():
            return resolve_dataset(where)
        raise MissingDatasetError(_missing_message(key, where, "folder not found"))
    raise DataError(f"{p}: no such dataset folder (known dataset names: {', '.join(KNOWN_DATASETS)})")


# ------------------------------------------------------------------------------------------------ stages
class _Stages:
    """Times each stage and records the peak RSS after it."""

    def __init__(self):
        self.rows: list[dict] = []

    def run(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.rows.append({"stage": name, "elapsed_s": round(time.perf_counter() - start, 3),
                              "peak_rss_mib": round(peak_rss_mib(), 1)})


def _guarded(name: str, fn, *args, **kwargs) -> dict:
    """Run a stage; an error becomes its "not run" section (EmbedtagError: its message; else the exception)."""
    try:
        return fn(*args, **kwargs)
    except EmbedtagError as exc:
        return not_run(f"{name} failed: {exc}")
    except Exception as exc:  # a bug in one stage must not lose the others' results
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return not_run(f"{name} failed with an unexpected error: {last}")


def _extract(ds, store_dir: Path, backbone: str, batch_size, device, progress) -> dict:
    from embedtag.embeddings.pipeline import extract

    # the clips whose audio is there (a subset not downloaded is left out); clip ids are the dataset's ids
    src = ds.select([i for i, p in enumerate(ds.paths) if os.path.exists(p)])
    if not len(src):
        raise DataError(f"{ds.root}: none of the {len(ds)} audio files listed exists")
    summary = extract(src, store_dir, model=backbone, batch_size=batch_size, device=device, progress=progress)
    return {"status": "ok", **summary.as_dict()}


def _match(ds, store) -> np.ndarray:
    """Dataset row of each store clip (:func:`embedtag.inputs.match_clips`), -1 when none."""
    from embedtag.inputs import match_clips

    return np.array([-1 if i is None else i for i in match_clips(store.clip_ids, ds)], dtype=int)


def _confused_pairs(Y: np.ndarray, P: np.ndarray, vocab: list[str]) -> list[dict]:
    """(true, predicted) pairs where the top-ranked label is not one of the clip's labels, most frequent first."""
    top = P.argmax(1)
    c: Counter = Counter()
    for i, j in enumerate(top):
        if Y[i, j] == 0:
            for t in np.flatnonzero(Y[i]):
                c[(vocab[t], vocab[j])] += 1
    return [{"true": a, "predicted": b, "count": n} for (a, b), n in c.most_common(CONFUSED_PAIRS)]


def _heads(store, ds, heads: list[str], folds: int, seed: int, progress: bool) -> dict:
    from embedtag.heads import make_head
    from embedtag.heads.training import cross_validate, noisy_mask, train_head
    from embedtag.metrics import accuracy, lwlrap, macro_map

    row = _match(ds, store)
    keep = row >= 0
    if not keep.any():
        raise DataError(f"no clip of the store matches a clip of {ds.root}")
    X_all = store.embeddings()[keep]
    rows = row[keep]
    vocab = list(ds.vocabulary)
    Y_all = ds.select(rows).multi_hot()
    subsets = np.array([ds.subsets[i] for i in rows], dtype=object)
    ds_folds = [ds.folds[i] for i in rows]
    test = subsets == "test"
    train = ~test & (Y_all.sum(1) > 0)
    X, Y, S = X_all[train], Y_all[train], subsets[train]
    has_noisy = bool((S == "noisy").any())
    subset_arg = S if has_noisy else None
    scored = ~noisy_mask(subset_arg, len(X)) & (Y.sum(1) > 0)
    fold_ids = None
    if all(ds_folds[i] is not None for i in np.flatnonzero(train)) and len(set(ds_folds)) >= 2:
        fold_ids = np.array([ds_folds[i] for i in np.flatnonzero(train)])
        cv_description = f"{len(set(fold_ids.tolist()))}-fold CV on the dataset's own folds"
    else:
        if scored.sum() < folds:
            raise DataError(f"{int(scored.sum())} labelled clips cannot be split into {folds} folds")
        cv_description = f"{folds}-fold multi-label stratified CV"
    if has_noisy:
        cv_description += " over the curated clips (noisy clips only ever train)"
    multi_label = bool((Y[scored].sum(1) != 1).any())
    single = not multi_label
    notes = []
    test_labelled = test & (Y_all.sum(1) > 0)
    results, best = [], None
    strategies = STRATEGIES if has_noisy else {PLAIN_STRATEGY: ({}, {}, None)}
    for h in heads:
        for sname, (train_kw, hparams, only) in strategies.items():
            if only is not None and h not in only:
                continue
            start = time.perf_counter()

            def make(h=h, hparams=hparams):
                return make_head(h, **hparams, multi_label=multi_label, seed=seed)

            cv = cross_validate(make, X, Y, subset=subset_arg, folds=folds, seed=seed, fold_ids=fold_ids,
                                progress=progress, **train_kw)
            oof = cv.oof[cv.scored]
            r = {"head": h, "strategy": sname, "lwlrap": cv.lwlrap, "fold_lwlrap": cv.fold_lwlrap,
                 "fold_std": float(np.std(cv.fold_lwlrap)), "macro_map": macro_map(Y[cv.scored], oof),
                 "accuracy": accuracy(Y[cv.scored], oof) if single else None}
            if test_labelled.any():
                fitted = train_head(make, X, Y, subset=subset_arg, **train_kw)
                r["test_lwlrap"] = lwlrap(Y_all[test_labelled], fitted.predict_proba(X_all[test_labelled]))
            r["elapsed_s"] = round(time.perf_counter() - start, 2)
            results.append(r)
            if best is None or r["lwlrap"] > best[0]["lwlrap"]:
                best = (r, cv)
    if not results:
        raise DataError("no head to run")
    r_best, cv_best = best
    prior = cross_validate(lambda: make_head("prior", multi_label=multi_label), X, Y, subset=subset_arg, folds=folds,
                           seed=seed, fold_ids=fold_ids)
    baselines = {"prior": prior.lwlrap, "zero_shot": None}
    if store.manifest.has_scores:
        from embedtag.heads.zeroshot import zero_shot_store

        try:
            zs, mapping = zero_shot_store(store, vocab)
            zs = zs[keep][train]
            baselines["zero_shot"] = lwlrap(Y[scored], zs[scored])
            covered = sum(1 for v in mapping.values() if v)
            notes.append(f"zero-shot baseline: {covered} of {len(vocab)} labels map to AudioSet class names"
                         + ("; the others score 0" if covered < len(vocab) else ""))
        except EmbedtagError as exc:
            notes.append(f"zero-shot baseline not run: {exc}")
    n_pos = Y[cv_best.scored].sum(0).astype(int)
    per_class = [{"label": lab, "n_clips": int(n_pos[j]), "lwlrap": float(cv_best.per_class[j]),
                  "weight": float(cv_best.class_weights[j])} for j, lab in enumerate(vocab) if n_pos[j] > 0]
    best_row = {k: r_best.get(k) for k in ("head", "strategy", "lwlrap", "accuracy", "test_lwlrap")}
    # the plots of the best head's out-of-fold scores, as a summary small enough for results.json
    diagnostics = classification_diagnostics(Y[cv_best.scored], cv_best.oof[cv_best.scored], vocab, multi_label)
    if "auto" in heads:
        notes.append("auto picks among logreg (C by inner CV), mlp, knn and, from 1000 clips, lightgbm by an inner "
                     "3-fold CV on each training fold, so its score is out-of-fold like the others'")
    return {"status": "ok", "rows": results, "best": best_row, "baselines": baselines, "per_class": per_class,
            "confused_pairs": _confused_pairs(Y[cv_best.scored], cv_best.oof[cv_best.scored], vocab),
            "diagnostics": diagnostics,
            "cv_description": cv_description, "multi_label": multi_label, "n_train_clips": int(len(X)),
            "n_scored_clips": int(scored.sum()), "n_test_clips": int(test_labelled.sum()), "notes": notes}


def _retrieval(store, ds, seed: int, max_queries: int) -> dict:
    from embedtag.search import build_index, evaluate_index

    row = _match(ds, store)
    labels = {c: (ds.labels[i] if i >= 0 else None) for c, i in zip(store.clip_ids, row)}
    lists = [v for v in labels.values() if v]
    if not lists:
        raise DataError("no labelled clip in the store to query with")
    # a label every clip carries makes every neighbour relevant (precision@k = 1 whatever the embeddings): leave it
    # out of the relevance, as benchmarks/search_real does
    common = sorted({lab for v in lists for lab in v if all(lab in w for w in lists)})
    if common:
        labels = {c: ([x for x in v if x not in common] or None) if v else None for c, v in labels.items()}
        if not any(labels.values()):
            raise DataError(f"every clip carries the same labels ({', '.join(common)}); retrieval has nothing to "
                            "tell apart")
    index = build_index(store, kind="flat", metric="cosine")
    out = {"status": "ok", "kind": "flat", "metric": "cosine", "k": [], "precision_at_k": [], "map_at_k": []}
    for k in RETRIEVAL_K:
        if k >= len(index):
            break
        ev = evaluate_index(index, labels, k=k, max_queries=max_queries, seed=seed)
        out["k"].append(ev.k)
        out["precision_at_k"].append(ev.precision_at_k)
        out["map_at_k"].append(ev.map_at_k)
        out["chance_precision"], out["n_queries"] = ev.chance_precision, ev.n_queries
    if not out["k"]:
        raise DataError("retrieval needs at least 2 clips")
    if common:
        out["labels_ignored"] = common
        out["note"] = (f"every labelled clip carries {', '.join(common)}; relevance ignores it (it would make every "
                       "neighbour relevant)")
    return out


def _finetune(ds, backbone: str, folds: int, seed: int, epochs, device: str, out_dir: Path, progress: bool,
              best_head: dict | None) -> dict:
    """Fine-tune a CNN end to end with :func:`embedtag.finetune.finetune` (K-fold, out-of-fold lwlrap). The run
    directory is resumed, so re-running the benchmark continues an interrupted fine-tune instead of restarting."""
    import importlib.util

    if importlib.util.find_spec("embedtag.finetune") is None:
        return not_run("embedtag.finetune is not part of this installation")
    from embedtag.finetune import FINETUNABLE, finetune

    notes = []
    ft_backbone = backbone
    if backbone not in FINETUNABLE:
        ft_backbone = FINETUNABLE[0]
        notes.append(f"{backbone} cannot be fine-tuned here; fine-tuned {ft_backbone} instead "
                     f"(fine-tunable: {', '.join(FINETUNABLE)})")
    stages = ("noisy", "curated") if "noisy" in ds.subsets else ("curated",)
    if any(f is not None for f in ds.folds):
        notes.append("fine-tuning uses stratified folds, not the dataset's own folds")
    kwargs = {} if epochs is None else {"epochs": epochs}
    start = time.perf_counter()
    result = finetune(ds, backbone=ft_backbone, out=out_dir, stages=stages, folds=folds, seed=seed, device=device,
                      progress=progress, resume=True, **kwargs)
    out = {"status": "ok", "backbone": ft_backbone, "cv_lwlrap": result.cv_lwlrap,
           "fold_lwlrap": list(result.fold_lwlrap),
           "fold_std": float(np.std(result.fold_lwlrap)) if result.fold_lwlrap else None,
           "stages": ",".join(stages), "epochs": str(result.config.get("train", {}).get("epochs")),
           "device": result.config.get("device"), "elapsed_s": round(time.perf_counter() - start, 1),
           "run_dir": str(result.path), "note": result.config.get("note", "")}
    if best_head and result.cv_lwlrap is not None:
        out["best_head"] = f"{best_head['head']} / {best_head['strategy']}"
        out["best_head_lwlrap"] = best_head["lwlrap"]
        out["gain_over_best_head"] = result.cv_lwlrap - best_head["lwlrap"]
    if notes:
        out["notes"] = "; ".join(notes)
    return out


def run_benchmark(data: str | os.PathLike, out_dir: str | os.PathLike, *, backbone: str | None = None,
                  heads: list[str] | tuple[str, ...] | str = DEFAULT_HEADS, folds: int = 5, finetune: bool = False,
                  finetune_epochs: int | tuple[int, ...] | None = None, seed: int = 0, batch_size: int | None = None,
                  device: str = "auto", levels: bool = True,
                  max_queries: int = 2000, progress: bool = True, command: str | None = None) -> dict:
    """Run profile -> extract -> heads -> (fine-tune) -> retrieval on the dataset ``data`` and write the report
    into ``out_dir`` (``report.md``, ``report.html``, PNGs, ``results.json``; the store in ``out_dir/store``).

    ``data``: a dataset folder in any layout :func:`~embedtag.datasets.load_dataset` reads, or a known dataset name
    (``fsdkaggle2019``, ``esc50``) under :func:`data_home`. ``heads``: head kinds (``logreg,mlp,...``; default
    :data:`DEFAULT_HEADS`, ``auto`` beside the single heads).
    ``finetune``: also fine-tune a CNN end to end (:func:`embedtag.finetune.finetune`, ``finetune_epochs`` per
    stage, default its own), written to and resumed from ``out_dir/finetune``.
    Returns the results dict (with ``report`` paths added)."""
    if backbone is None:
        from embedtag.embeddings.registry import DEFAULT_MODEL

        backbone = DEFAULT_MODEL
    from embedtag.heads import HEADS
    from embedtag.profile import load_any, profile_dataset

    head_list = [h.strip() for h in heads.split(",")] if isinstance(heads, str) else list(heads)
    head_list = [h for h in head_list if h]
    unknown = [h for h in head_list if h not in HEADS]
    if unknown or not head_list:
        raise DataError(f"unknown head(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(HEADS)}")
    if not (isinstance(folds, int) and folds >= 2):
        raise DataError(f"invalid folds={folds!r}: expected an integer >= 2")
    root = resolve_dataset(data)
    out_dir = Path(out_dir)
    if (out_dir / "store").is_dir():
        # checked before anything is written, so a mistaken --out never replaces a finished report
        from embedtag.errors import IncompatibleError
        from embedtag.store import open_store

        try:
            held = open_store(out_dir / "store").manifest.backbone
        except EmbedtagError:
            held = None
        if held is not None and held != backbone:
            raise IncompatibleError(f"{out_dir} holds a benchmark of {held}, not {backbone}; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = load_any(root)
    started, t0 = utc_now(), time.perf_counter()
    stages = _Stages()
    results: dict = {
        "dataset": {"name": root.name, "path": str(root), "layout": ds.layout, "n_clips": len(ds),
                    "n_labels": len(ds.vocabulary), "multi_label": ds.is_multi_label,
                    "has_noisy": "noisy" in ds.subsets},
        "provenance": {"machine": machine_info(), "versions": versions(), "backbone": backbone, "seed": seed,
                       "folds": folds, "heads": head_list, "finetune_epochs": finetune_epochs, "time_utc": started,
                       "device": device,
                       "command": command or f"run_benchmark({str(data)!r}, {str(out_dir)!r})"},
    }
    results["profile"] = stages.run("profile", _guarded, "profile", lambda: {
        "status": "ok", **profile_dataset(ds, levels=levels, progress=progress).as_dict()})
    store_dir = out_dir / "store"
    results["extract"] = stages.run("extract", _guarded, "extract", _extract, ds, store_dir, backbone, batch_size,
                                    device, progress)
    store = None
    if results["extract"].get("status") == "ok":
        from embedtag.store import open_store

        store = open_store(store_dir)
        results["provenance"].update(device=results["extract"].get("device", device),
                                     weights_sha256=store.manifest.weights_sha256,
                                     store_fingerprint=store.fingerprint())
        if len(store.clip_ids) == 0:
            store = None
    missing = not_run("no embeddings (extraction " + (results["extract"].get("reason") or "stored no clip") + ")")
    results["heads"] = stages.run("heads", _guarded, "heads", _heads, store, ds, head_list, folds, seed,
                                  progress) if store is not None else missing
    if finetune:
        best_head = results["heads"].get("best") if results["heads"].get("status") == "ok" else None
        results["finetune"] = stages.run("finetune", _guarded, "fine-tune", _finetune, ds, backbone, folds, seed,
                                         finetune_epochs, device, out_dir / "finetune", progress, best_head)
    else:
        results["finetune"] = not_run("not requested (pass --finetune)")
    results["retrieval"] = stages.run("retrieval", _guarded, "retrieval", _retrieval, store, ds, seed,
                                      max_queries) if store is not None else missing
    ext = results["extract"]
    results["resources"] = {"status": "ok", "stages": stages.rows, "peak_rss_mib": round(peak_rss_mib(), 1),
                            "clips_per_s": ext.get("clips_per_s"), "realtime_factor": ext.get("realtime_factor")}
    results["provenance"]["elapsed_s"] = round(time.perf_counter() - t0, 2)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n",
                                          encoding="utf-8")
    paths = write_report(results, out_dir)
    results["report"] = {k: (str(v) if not isinstance(v, list) else [str(x) for x in v]) for k, v in paths.items()}
    return results


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
