"""Heads: classifiers on clip embeddings (logistic regression, PyTorch MLP, LightGBM, kNN over FAISS, a
label-prior baseline), the noisy-label training strategies, cross-validation and a zero-shot baseline.

Python API (the CLI calls exactly these)::

    from embedtag.heads import fit_head, predict_store, evaluate_head, load_head
    head, report = fit_head("store/", labels="labels.csv", head="mlp", folds=5, noisy_weight=0.5)
    head.save("my_head/")                                             # overwrite=True to replace one
    probs = predict_store(load_head("my_head/"), "other_store/")     # DataFrame: fname + one column per label

Each head is a scikit-learn estimator (``clone``, ``get_params``/``set_params``, ``GridSearchCV`` work)::

    from embedtag.heads import LogisticHead
    head = LogisticHead(C=0.1).fit(X, [["dog"], ["dog", "bark"], None])   # or a multi-hot matrix
    head.classes_, head.predict_proba(X)                                   # label names, (n, n_labels)
"""

from __future__ import annotations

from embedtag.heads.auto import AutoHead
from embedtag.heads.base import Head, ParamError
from embedtag.heads.knn import KNNHead
from embedtag.heads.lgbm import LightGBMHead
from embedtag.heads.logreg import LogisticHead
from embedtag.heads.mlp import MLPHead
from embedtag.heads.prior import PriorHead

HEADS: dict[str, type[Head]] = {
    "logreg": LogisticHead,
    "mlp": MLPHead,
    "lightgbm": LightGBMHead,
    "knn": KNNHead,
    "prior": PriorHead,
    "auto": AutoHead,
}


def make_head(kind: str, **params) -> Head:
    """A new, unfitted head of ``kind`` (one of :data:`HEADS`) with validated ``params``: unlike the head
    classes themselves (whose ``__init__`` only stores parameters, as scikit-learn asks), a bad or unknown
    parameter is a :class:`ParamError` here, before any training."""
    if kind not in HEADS:
        raise ParamError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")
    known = HEADS[kind]._get_param_names()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ParamError(f"{kind} head: unknown parameter {unknown[0]!r} (known: {', '.join(known)})")
    head = HEADS[kind](**params)
    head._validate()
    return head


def load_head(directory) -> Head:
    """Load any saved head (see :meth:`Head.load`)."""
    return Head.load(directory)


from embedtag.heads.api import (  # noqa: E402  (api needs HEADS defined above)
    FitReport,
    evaluate_head,
    fit_head,
    labels_for_store,
    predict_files,
    predict_store,
    top_k,
)
from embedtag.heads.training import CVResult, cross_validate, train_head  # noqa: E402
from embedtag.heads.zeroshot import map_labels, zero_shot_scores, zero_shot_store  # noqa: E402

__all__ = ["Head", "HEADS", "AutoHead", "make_head", "load_head", "LogisticHead", "MLPHead", "LightGBMHead", "KNNHead",
           "PriorHead", "fit_head", "predict_store", "predict_files", "evaluate_head", "labels_for_store",
           "FitReport", "top_k", "train_head", "cross_validate", "CVResult", "map_labels", "zero_shot_scores",
           "zero_shot_store", "ParamError"]
