"""Store-level functions: fit a head on an embedding store + labels, predict, evaluate. The CLI is a thin layer
over these."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from embedtag.errors import DataError
from embedtag.heads.base import Head, ParamError, resolve_multi_label
from embedtag.heads.thresholds import as_array, decide, fit_thresholds, threshold_metrics
from embedtag.heads.training import CVResult, cross_validate, noisy_mask, train_head
from embedtag.inputs import Dataset, audio_files, load_dataset, match_clips, to_multi_hot
from embedtag.metrics import accuracy, accuracy_multi, lwlrap, lwlrap_per_class, macro_map


def _open(store):
    from embedtag.store import EmbeddingStore, open_store

    return store if isinstance(store, EmbeddingStore) else open_store(store)


def dataset_folds(store, labels) -> np.ndarray | None:
    """The dataset's own fold of each store clip (e.g. ESC-50's 5 folds), or None when ``labels`` gives none."""
    if labels is None:
        return None
    store = _open(store)
    ds = labels if isinstance(labels, Dataset) else load_dataset(labels)
    if all(f is None for f in ds.folds):
        return None
    return np.array([None if i is None else ds.folds[i] for i in match_clips(store.clip_ids, ds)], dtype=object)


def labels_for_store(store, labels=None, vocabulary: list[str] | None = None):
    """Match labels to the clips of ``store``.

    ``labels``: None (the store's own ``labels`` column), a ``fname,labels`` CSV or any dataset
    :func:`~embedtag.inputs.load_dataset` reads, or a :class:`Dataset`. A dataset clip matches a store clip by
    ``clip_id``, else by file name when that name is unique on both sides (:func:`~embedtag.inputs.match_clips`;
    a shared name is an error). Returns ``(Y, vocabulary, subsets, labelled)``:
    Y (n_store_clips, n_labels) float32, the ordered vocabulary, each clip's subset (or None), and a mask of the
    store clips that have labels."""
    store = _open(store)
    ids = store.clip_ids
    if labels is None:
        lists = store.labels()
        if all(lab is None for lab in lists):
            raise DataError(f"store {store.path} carries no labels; pass a labels CSV (--labels)")
        vocab = list(vocabulary) if vocabulary is not None else sorted({x for lab in lists if lab for x in lab})
        subsets = [None] * len(ids)
    else:
        ds = labels if isinstance(labels, Dataset) else load_dataset(labels, vocabulary)
        vocab = list(vocabulary) if vocabulary is not None else list(ds.vocabulary)
        match = match_clips(ids, ds)
        lists = [None if i is None else ds.labels[i] for i in match]
        subsets = [None if i is None else ds.subsets[i] for i in match]
        if all(lab is None for lab in lists):
            src = labels if not isinstance(labels, Dataset) else labels.root
            raise DataError(f"no clip of store {store.path} (e.g. {ids[0] if ids else 'none'!r}) is named in "
                            f"{src}; labels are matched by fname = clip_id or file name")
    labelled = np.array([lab is not None and len(lab) > 0 for lab in lists])
    Y = to_multi_hot(lists, vocab)
    return Y, vocab, np.array(subsets, dtype=object), labelled


@dataclass
class FitReport:
    head: str
    n_clips: int
    n_labels: int
    multi_label: bool
    fit_time_s: float
    cv: CVResult | None = None
    prior_cv_lwlrap: float | None = None
    zero_shot_lwlrap: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {"head": self.head, "n_clips": self.n_clips, "n_labels": self.n_labels, "multi_label": self.multi_label,
             "fit_time_s": self.fit_time_s, "prior_cv_lwlrap": self.prior_cv_lwlrap,
             "zero_shot_lwlrap": self.zero_shot_lwlrap, **self.extra}
        if self.cv is not None:
            d.update(self.cv.summary())
        return d


def fit_head(store, labels=None, head: str = "auto", params: dict | None = None, *, noisy_weight: float = 0.3,
             confidence: str | None = None, confidence_threshold: float = 0.5, folds: int = 0,
             multi_label: bool | str = "auto", seed: int = 0, vocabulary: list[str] | None = None,
             dataset_folds_first: bool = True, progress: bool = True,
             threshold_folds: int = 3) -> tuple[Head, FitReport]:
    """Train a head of kind ``head`` on the labelled clips of ``store``; with ``folds >= 2`` first measure it
    by cross-validation (with the label-prior baseline and, when the store keeps AudioSet scores, the
    zero-shot baseline on the same clips). When the labels come with the dataset's own folds for every scored
    clip (ESC-50) and ``dataset_folds_first``, those folds are used instead of ``folds`` stratified ones.
    Returns the head fitted on all labelled clips and a report.

    The head also gets per-class decision thresholds (``head.thresholds_``, saved with it) maximising F1 on
    out-of-fold predictions: those of the CV when ``folds >= 2``, else of an extra ``threshold_folds``-fold
    CV (0: none; the head then decides at 0.5). Too few clips for the inner folds also leaves it at 0.5."""
    from embedtag.heads import make_head
    from embedtag.heads.zeroshot import zero_shot_store

    store = _open(store)
    Y, vocab, subsets, labelled = labels_for_store(store, labels, vocabulary)
    if labelled.sum() < 2:
        raise DataError(f"store {store.path}: {int(labelled.sum())} labelled clips; a head needs at least 2")
    X = store.embeddings()
    Xl, Yl, Sl = X[labelled], Y[labelled], subsets[labelled]
    multi_label = resolve_multi_label(multi_label, Yl)
    params = dict(params or {})
    for name, option in (("multi_label", "multi_label= (--mode)"), ("seed", "seed= (--seed)")):
        if name in params:
            raise ParamError(f"head parameter {name!r} is set by fit_head's {option}, not in params (-p)")
    make_head(head, **params, multi_label=multi_label, seed=seed)  # validate params before any long work

    def make():
        return make_head(head, **params, multi_label=multi_label, seed=seed)

    subset_arg = Sl if any(s is not None for s in Sl) else None
    train_kw = {"noisy_weight": noisy_weight, "confidence": confidence,
                "confidence_threshold": confidence_threshold}
    report = FitReport(head, int(labelled.sum()), len(vocab), multi_label, 0.0)
    if folds:
        fold_ids = dataset_folds(store, labels) if dataset_folds_first else None
        if fold_ids is not None:
            fold_ids = fold_ids[labelled]
            scored = ~noisy_mask(subset_arg, len(Xl))
            if any(f is None for f in fold_ids[scored]):
                fold_ids = None  # some scored clips have no fold: stratify instead
            else:
                fold_ids = np.where(scored, fold_ids, -1).astype(int)
        report.cv = cross_validate(make, Xl, Yl, subset=subset_arg, folds=folds, seed=seed,
                                   fold_ids=fold_ids, progress=progress, **train_kw)
        prior = cross_validate(lambda: make_head("prior", multi_label=multi_label), Xl, Yl, subset=subset_arg,
                               folds=folds, seed=seed, fold_ids=fold_ids)
        report.prior_cv_lwlrap = prior.lwlrap
        if store.manifest.has_scores:
            zs, _ = zero_shot_store(store, vocab)
            scored = report.cv.scored
            report.zero_shot_lwlrap = lwlrap(Yl[scored], zs[labelled][scored])
    start = time.perf_counter()
    oof = report.cv
    if oof is None and threshold_folds >= 2:
        scored = ~noisy_mask(subset_arg, len(Xl)) & (Yl.sum(1) > 0)
        if scored.sum() >= 2 * threshold_folds:
            try:
                oof = cross_validate(make, Xl, Yl, subset=subset_arg, folds=threshold_folds, seed=seed, **train_kw)
            except DataError:  # e.g. a fold left with one class only: keep the default threshold
                oof = None
    thresholds = None
    if oof is not None:
        thresholds = fit_thresholds(Yl[oof.scored], oof.oof[oof.scored])
    fitted = train_head(make, Xl, Yl, subset=subset_arg, **train_kw)
    fitted.thresholds_ = None if thresholds is None else [float(t) for t in thresholds]
    report.fit_time_s = time.perf_counter() - start
    if oof is not None:
        D = decide(oof.oof[oof.scored], thresholds, multi_label)
        m = threshold_metrics(Yl[oof.scored], D)
        report.extra["oof_f1_micro"] = m["micro_f1"]
        report.extra["oof_f1_macro"] = m["macro_f1"]
        report.extra["threshold_folds"] = len(oof.fold_lwlrap)
    fitted.vocabulary = vocab
    fitted.train_clip_ids = [c for c, keep in zip(store.clip_ids, labelled) if keep]
    fitted.backbone = store.manifest.backbone
    fitted.store_fingerprint = store.fingerprint()
    fitted.extraction = {"pooling": store.manifest.pooling, "window_s": store.manifest.window_s,
                         "sample_rate": store.manifest.sample_rate,
                         "weights_sha256": store.manifest.weights_sha256}
    clean = ~noisy_mask(subset_arg, len(Xl))
    fitted.metrics = {**fitted.metrics, **report.as_dict(), "noisy_weight": noisy_weight, "confidence": confidence,
                      "train_lwlrap": lwlrap(Yl[clean], fitted.predict_proba(Xl[clean]))}
    return fitted, report


def _frame(ids, probs, vocabulary):
    import pandas as pd

    df = pd.DataFrame(probs, columns=list(vocabulary))
    df.insert(0, "fname", list(ids))
    return df


def predict_store(head: Head, store):
    """Probabilities for every clip of ``store`` as a DataFrame in the Kaggle submission layout:
    ``fname`` (the clip_id) then one column per label in vocabulary order."""
    store = _open(store)
    head.check_store(store)
    return _frame(store.clip_ids, head.predict_proba(store.embeddings()), head.vocabulary)


#: kept for callers of the old private name; :func:`embedtag.inputs.audio_files` reads audio inputs
_audio_inputs = audio_files


def predict_files(head: Head, inputs, *, batch_size: int | None = None, device: str = "auto",
                  progress: bool = True):
    """Embed audio files (or directories of them; clip ids are paths relative to the directory) with the
    head's backbone and pooling, then predict. Returns the same DataFrame as :func:`predict_store`, without
    the files that could not be read: ``frame.attrs["failures"]`` lists them as ``(clip_id, reason)``."""
    from embedtag.embeddings.pipeline import encode

    if not head.backbone:
        raise DataError("this head records no backbone, so audio cannot be embedded for it; predict on a store")
    ids, paths = audio_files(inputs)
    ext = getattr(head, "extraction", {}) or {}
    failures: list[tuple[str, str]] = []

    def failed(i: int, exc) -> None:  # one unreadable file is recorded; the others are still predicted
        failures.append((ids[i], getattr(exc, "reason", None) or str(exc)))

    X = encode(paths, model=head.backbone, batch_size=batch_size, device=device,
               pooling=ext.get("pooling", "mean"), window_s=ext.get("window_s"), progress=progress,
               on_error=failed)
    ok = ~np.isnan(X).any(axis=1)
    frame = _frame([c for c, keep in zip(ids, ok) if keep], head.predict_proba(X[ok]), head.vocabulary)
    frame.attrs["failures"] = failures
    return frame


def top_k(frame, k: int) -> list[dict]:
    """The ``k`` most probable labels of each clip: ``[{"fname", "tags": [{"label", "probability"}]}]``."""
    if k < 1:
        raise ParamError(f"invalid top-k {k}: expected >= 1")
    labels = list(frame.columns[1:])
    probs = frame[labels].to_numpy()
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [{"fname": f, "tags": [{"label": labels[j], "probability": float(probs[i, j])} for j in order[i]]}
            for i, f in enumerate(frame["fname"])]


def _labels_in_vocabulary(store, labels, vocabulary: list[str]):
    """``labels_for_store`` in the predictor's ``vocabulary`` order; a store clip labelled with a label the
    predictor does not know is a DataError naming that clip."""
    Y_own, own_vocab, subsets, labelled = labels_for_store(store, labels)
    index = {lab: j for j, lab in enumerate(vocabulary)}
    unknown = [j for j, lab in enumerate(own_vocab) if lab not in index and Y_own[:, j].any()]
    if unknown:
        j = unknown[0]
        clip = store.clip_ids[int(np.flatnonzero(Y_own[:, j])[0])]
        others = f" ({len(unknown) - 1} more unknown labels)" if len(unknown) > 1 else ""
        raise DataError(f"clip {clip!r} of {store.path} is labelled {own_vocab[j]!r}, which is not in the "
                        f"predictor's vocabulary of {len(vocabulary)} labels ({', '.join(vocabulary[:5])}"
                        f"{', ...' if len(vocabulary) > 5 else ''}){others}")
    Y = np.zeros((len(Y_own), len(vocabulary)), np.float32)
    for j, lab in enumerate(own_vocab):
        if lab in index:
            Y[:, index[lab]] = Y_own[:, j]
    return Y, subsets, labelled


def evaluate_head(predictor, store, labels=None, *, out: str | os.PathLike | None = None) -> dict:
    """Score a head or a fine-tuned run on the labelled clips of ``store`` (noisy-subset clips excluded):
    lwlrap, per-class lwlrap with class weights and average precision, macro mAP, ``accuracy_multi``, for
    single-label data accuracy, and precision / recall / F1 of the predictor's decisions (its stored thresholds,
    else 0.5; single-label: the top label) per class and as ``micro_*`` / ``macro_*``. ``per_class`` is a
    DataFrame sorted by vocabulary order.

    ``train_overlap`` is how many of the evaluated clips the predictor was trained on (by clip id; None when
    the artifact does not record its training clips): when it is above 0 those scores are in-sample.

    ``out``: also write the report there (:func:`embedtag.report.write_evaluation_report`: metrics.json with
    per-class AP and the confusion matrix, per_class.csv, PNG plots, report.html); ``result["report"]`` then holds
    the paths."""
    import pandas as pd
    from sklearn.metrics import average_precision_score

    store = _open(store)
    if isinstance(predictor, Head):
        predictor.check_store(store)
    else:
        from embedtag.finetune.artifact import FinetunedModel

        if not isinstance(predictor, FinetunedModel):
            raise ParamError(f"evaluate_head: expected a head or a fine-tuned run, got {type(predictor).__name__}")
    vocabulary = list(predictor.vocabulary)
    Y, subsets, labelled = _labels_in_vocabulary(store, labels, vocabulary)
    keep = labelled & ~noisy_mask(subsets, len(Y))
    if not keep.any():
        raise DataError(f"store {store.path}: no labelled clip to evaluate on")
    Yk = Y[keep]
    # a fine-tuned network scores the clips' audio (their paths), a head the store's embeddings
    P = predictor.predict_proba(store.embeddings()[keep]) if isinstance(predictor, Head) else \
        predictor.predict_proba_store(store, rows=keep)
    evaluated = [c for c, k in zip(store.clip_ids, keep) if k]
    train_ids = getattr(predictor, "train_clip_ids", None)
    overlap = None if train_ids is None else len(set(evaluated) & set(train_ids))
    per_class, weights = lwlrap_per_class(Yk, P)
    n_pos = Yk.sum(0).astype(int)
    ap = [average_precision_score(Yk[:, j], P[:, j]) if 0 < n_pos[j] < len(Yk) else np.nan
          for j in range(Yk.shape[1])]
    stored = getattr(predictor, "thresholds_", None)
    thresholds = as_array(stored, vocabulary)
    multi = bool(getattr(predictor, "multi_label", True))
    tm = threshold_metrics(Yk, decide(P, thresholds, multi))
    table = pd.DataFrame({"label": vocabulary, "n_clips": n_pos, "lwlrap": per_class, "weight": weights,
                          "average_precision": ap, "threshold": thresholds, "precision": tm["precision"],
                          "recall": tm["recall"], "f1": tm["f1"]})
    result = {"n_clips": int(keep.sum()), "lwlrap": lwlrap(Yk, P), "macro_map": macro_map(Yk, P),
              "accuracy_multi": accuracy_multi(Yk, P), "train_overlap": overlap,
              "thresholds": "top label" if not multi else ("per class (out-of-fold F1)" if stored is not None
                                                            else "0.5 (the predictor stores none)"),
              **{k: v for k, v in tm.items() if k.startswith(("micro_", "macro_"))},
              "per_class": table, "truth": Yk, "scores": P, "clip_ids": evaluated}
    if (Yk.sum(1) == 1).all():
        result["accuracy"] = accuracy(Yk, P)
    if out is not None:
        from embedtag.report import versions, write_evaluation_report

        what = f"{predictor.kind} head" if isinstance(predictor, Head) else "fine-tuned run"
        backbone = getattr(predictor, "backbone", None) or getattr(predictor, "backbone_name", None) or "?"
        prov = {"predictor": f"{what} ({backbone})", "store": str(store.path),
                "labels": "the store's own" if labels is None else str(getattr(labels, "root", labels)),
                "versions": versions()}
        result["report"] = write_evaluation_report(result, out, provenance=prov)
    return result

