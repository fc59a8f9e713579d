"""The interface every head implements, and the on-disk artifact format.

A head maps clip embeddings (n_clips, embedding_dim) to label probabilities (n_clips, n_labels), in one of two
modes: multi-label (independent sigmoids, trained with binary cross-entropy) or single-label (softmax over the
labels, each clip exactly one label).

Heads follow scikit-learn's estimator conventions (:class:`sklearn.base.BaseEstimator`): ``__init__`` only
stores its parameters, ``fit`` validates them and learns, ``get_params``/``set_params``/``sklearn.base.clone``
work, and what ``fit`` learns ends with ``_`` (``classes_``, ``n_features_in_``, ``n_labels_``, weights).
``fit(X, y)`` takes a multi-hot matrix (n, n_labels) or label lists (``[["dog"], ["dog", "bark"], None]``).

Artifact: a directory ::

    HEAD/
      config.json          the common header ({"kind": "head", "format_version", "embedtag_version",
                           "created_at"}), then "head" (logreg, mlp, ...), "params", "multi_label", "n_labels",
                           "vocabulary", "backbone", "embedding_dim", "store_fingerprint", "extraction", "metrics",
                           "train_clips" (file name and count, when known), "weights_id" (also in the
                           weights' metadata: weights and config from two different saves are refused)
      weights.safetensors  arrays (every head)  |  lightgbm/label_XXX.txt (LightGBM text models)
      train_clips.json     the clip ids the head was trained on (kept apart so config.json stays readable)

No pickle anywhere: config is JSON, weights are safetensors or LightGBM's own text format. Heads saved before
the common header (``"format": "embedtag-head"``, head type under ``"kind"``) still load.
"""

from __future__ import annotations

import json
import math
import os
import types
import uuid
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from embedtag import artifacts
from embedtag.errors import ArtifactError, IncompatibleError, ParamError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
TRAIN_CLIPS_NAME = "train_clips.json"
FORMAT = "embedtag-head"  # the marker of format-1 configs, written before the common header
FORMAT_VERSION = 2


def check_param(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ParamError(f"invalid {name}={value!r}: expected {expected}")


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_number(v) -> bool:
    """A finite real number (not a bool): ``C=1e309`` parses as inf and must be refused, not saved."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) \
        and math.isfinite(float(v))


def is_bool(v) -> bool:
    return isinstance(v, (bool, np.bool_))


def resolve_multi_label(multi_label, Y: np.ndarray) -> bool:
    """``"auto"``: single-label when every clip has exactly one label; True/False as given (False refused when a
    clip has another number of labels). One rule for fit_head and finetune."""
    if multi_label == "auto":
        return bool((Y.sum(1) != 1).any())
    if not isinstance(multi_label, bool):
        raise ParamError(f"invalid multi_label={multi_label!r}: expected True, False or 'auto'")
    if not multi_label and not np.all(Y.sum(1) == 1):
        raise ParamError("single-label mode needs exactly one label per clip; use multi_label=True (--mode multi)")
    return multi_label


def sigmoid(z: np.ndarray) -> np.ndarray:
    # split by sign so neither branch overflows
    out = np.empty_like(z, dtype=np.float64)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _is_label_lists(y) -> bool:
    """True when ``y`` is label lists (strings / None per clip) rather than a 0/1 matrix."""
    if isinstance(y, np.ndarray):
        return y.dtype.kind in "OUS"
    if not isinstance(y, (list, tuple)):
        return False
    for row in y:
        if row is None or isinstance(row, str):
            return True
        if isinstance(row, (list, tuple, set, frozenset, np.ndarray)):
            if any(isinstance(x, str) for x in row):
                return True
            if len(row) == 0:
                continue
            return False
        return False
    return len(y) > 0  # every row empty: label lists of unlabelled clips


def label_lists_to_multi_hot(y, vocabulary=None) -> tuple[np.ndarray, list[str]]:
    """Label lists -> (multi-hot float32 matrix, vocabulary). Each row is None (unlabelled), one label (str) or
    a list of labels; without ``vocabulary`` it is the sorted set of labels seen."""
    rows = []
    for i, row in enumerate(y):
        if row is None:
            rows.append(())
        elif isinstance(row, str):
            rows.append((row,))
        else:
            labs = tuple(row)
            bad = [x for x in labs if not isinstance(x, str)]
            if bad:
                raise ParamError(f"fit: label {bad[0]!r} of row {i} is not a string; give label lists of strings "
                                 "or a 0/1 matrix")
            rows.append(labs)
    vocab = sorted({x for labs in rows for x in labs}) if vocabulary is None else [str(v) for v in vocabulary]
    index = {lab: j for j, lab in enumerate(vocab)}
    Y = np.zeros((len(rows), len(vocab)), np.float32)
    for i, labs in enumerate(rows):
        for lab in labs:
            j = index.get(lab)
            if j is None:
                raise ParamError(f"fit: label {lab!r} of row {i} is not in the vocabulary of {len(vocab)} labels "
                                 f"({', '.join(vocab[:5])}{', ...' if len(vocab) > 5 else ''})")
            Y[i, j] = 1.0
    return Y, vocab


class Head(BaseEstimator):
    """Base class. Subclasses define ``kind``, an ``__init__`` that only stores its parameters, ``_validate``
    (parameter checks, raising ParamError), ``_fit``, ``_decision`` (or ``_predict_proba``), ``_state`` (arrays
    to save) and ``_set_state`` (arrays loaded).

    Besides what ``fit`` learns, a head carries provenance set by :func:`~embedtag.heads.fit_head` and kept by
    :meth:`save`: ``backbone``, ``extraction`` (how the training store was embedded), ``store_fingerprint``,
    ``metrics`` and ``train_clip_ids`` (the clip ids it was trained on; None when unknown)."""

    kind: str = ""

    # provenance: class-level defaults so that __init__ sets parameters only (scikit-learn's rule)
    backbone: str | None = None
    store_fingerprint: str | None = None
    train_clip_ids: list[str] | None = None
    #: per-class decision thresholds in vocabulary order (from out-of-fold predictions, see
    #: embedtag.heads.thresholds); None: :data:`embedtag.frames.DEFAULT_THRESHOLD` for every class
    thresholds_: list[float] | None = None
    metrics = types.MappingProxyType({})
    extraction = types.MappingProxyType({})

    def __init__(self, multi_label: bool = True, seed: int = 0):
        self.multi_label = multi_label
        self.seed = seed

    # ------------------------------------------------------------------ parameters
    def _validate(self) -> None:
        """Check every parameter (ParamError naming it). Called by fit(), make_head() and load()."""
        check_param(is_bool(self.multi_label), "multi_label", self.multi_label, "True or False")
        check_param(is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        self._validate_params()
        for name, value in self.get_params(deep=False).items():  # what the specific checks let through
            try:
                json.dumps(_jsonable(value), allow_nan=False)
            except (TypeError, ValueError):
                raise ParamError(f"invalid {name}={value!r}: expected a finite number, string, bool, list or "
                                 "None") from None

    def _validate_params(self) -> None:
        """Subclass hook: the checks of the subclass's own parameters."""

    def set_params(self, **params) -> Head:
        try:
            return super().set_params(**params)
        except ValueError as exc:  # scikit-learn's "Invalid parameter ..." is a ValueError
            raise ParamError(f"{self.kind} head: {str(exc).splitlines()[0]}") from None

    # ------------------------------------------------------------------ fitted state
    @property
    def vocabulary(self) -> list[str] | None:
        """The label names in column order (``list(classes_)``); None before fit."""
        classes = getattr(self, "classes_", None)
        return None if classes is None else [str(c) for c in classes]

    @vocabulary.setter
    def vocabulary(self, names) -> None:
        names = [str(n) for n in names]
        n_labels = getattr(self, "n_labels_", None)
        if n_labels is not None and len(names) != n_labels:
            raise ParamError(f"a vocabulary of {len(names)} labels for a head of {n_labels} label columns")
        self.classes_ = np.asarray(names, dtype=object)

    @property
    def embedding_dim(self) -> int | None:
        """Dimension of the embeddings the head was fitted on (``n_features_in_``); None before fit."""
        return getattr(self, "n_features_in_", None)

    def _check_fitted(self) -> None:
        if getattr(self, "n_labels_", None) is None:
            raise ParamError(f"this {self.kind} head is not fitted; call fit() or load() first")

    # ------------------------------------------------------------------ training / inference
    def fit(self, X, y, sample_weight=None, subset=None, X_val=None, Y_val=None, *, vocabulary=None) -> Head:
        """Train on embeddings ``X`` (n, dim) and targets ``y``: a 0/1 matrix (n, n_labels) or label lists
        (one list of label strings, a single string, or None for an unlabelled clip, per row).

        ``vocabulary`` names the label columns (and, with label lists, fixes their order and refuses other
        labels); default: the sorted labels seen (label lists), a DataFrame's column names, or ``label_0,
        label_1, ...`` (a matrix). It
        becomes ``classes_``. ``sample_weight`` (n,) scales each clip's loss; ``subset`` (n,) names each clip's
        source (``"curated"``, ``"noisy"``, ...) for heads that treat noisy clips differently;
        ``X_val``/``Y_val`` are used for early stopping where the head supports it."""
        self._validate()
        X = np.ascontiguousarray(X, dtype=np.float32)
        if hasattr(y, "to_numpy"):  # a pandas Series of label lists, or a DataFrame of 0/1 columns named by label
            if vocabulary is None and hasattr(y, "columns"):
                vocabulary = [str(c) for c in y.columns]
            y = y.to_numpy()
        if _is_label_lists(y):
            Y, vocab = label_lists_to_multi_hot(y, vocabulary)
        else:
            try:
                Y = np.asarray(y, dtype=np.float32)
            except (TypeError, ValueError):
                raise ParamError("fit: y must be a 0/1 matrix (n, n_labels) or label lists (a list of label "
                                 "strings, a string or None per clip)") from None
            vocab = None if vocabulary is None else [str(v) for v in vocabulary]
        if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
            raise ParamError(f"fit: X must be (n, dim) and y (n, n_labels) or n label lists with the same n; got "
                             f"{X.shape}, {Y.shape}")
        if len(X) == 0:
            raise ParamError("fit: no training clips")
        if Y.shape[1] == 0:
            raise ParamError("fit: no label column")
        if not np.all(np.isfinite(X)):
            raise ParamError("fit: embeddings contain NaN or infinite values")
        if vocab is not None and len(vocab) != Y.shape[1]:
            raise ParamError(f"fit: {Y.shape[1]} label columns but a vocabulary of {len(vocab)}")
        if vocab is not None and len(set(vocab)) != len(vocab):
            raise ParamError("fit: the vocabulary names a label twice")
        if not self.multi_label and not np.all(Y.sum(1) == 1):
            raise ParamError("single-label mode needs exactly one label per clip; use multi_label=True")
        if sample_weight is None:
            sample_weight = np.ones(len(X), np.float32)
        sample_weight = np.asarray(sample_weight, dtype=np.float32)
        if sample_weight.shape != (len(X),) or (sample_weight < 0).any() or not np.isfinite(sample_weight).all():
            raise ParamError("fit: sample_weight must be (n,) finite and >= 0")
        subset = None if subset is None else np.asarray(subset, dtype=object)
        if X_val is not None:
            X_val = np.ascontiguousarray(X_val, dtype=np.float32)
            if Y_val is not None and _is_label_lists(Y_val):
                Y_val, _ = label_lists_to_multi_hot(Y_val, vocab)
            Y_val = None if Y_val is None else np.asarray(Y_val, dtype=np.float32)
        self.n_features_in_ = int(X.shape[1])
        self.n_labels_ = int(Y.shape[1])
        self.classes_ = np.asarray(vocab if vocab is not None else [f"label_{j}" for j in range(Y.shape[1])],
                                   dtype=object)
        self.metrics = {}
        self._fit(X, Y, sample_weight, subset, X_val, Y_val)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n, n_labels) probabilities in ``classes_`` order (rows sum to 1 in single-label mode)."""
        self._check_fitted()
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise IncompatibleError(f"{self.kind} head expects {self.n_features_in_}-d embeddings"
                                    f"{' from ' + self.backbone if self.backbone else ''}, got shape {X.shape}")
        if len(X) == 0:
            return np.zeros((0, self.n_labels_), np.float32)
        return self._predict_proba(X).astype(np.float32)

    def _predict_proba(self, X: np.ndarray) -> np.ndarray:
        z = self._decision(X)
        return sigmoid(z) if self.multi_label else softmax(z)

    # subclass hooks
    def _fit(self, X, Y, sample_weight, subset, X_val, Y_val) -> None:
        raise NotImplementedError

    def _decision(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _save_extra(self, directory: Path) -> list[Path]:
        """Files other than weights.safetensors (LightGBM); returns the paths written."""
        return []

    def _load_extra(self, directory: Path) -> None:
        pass

    # ------------------------------------------------------------------ compatibility
    def check_store(self, store) -> None:
        """IncompatibleError unless ``store`` was made with this head's backbone and embedding dimension."""
        m = store.manifest
        if self.embedding_dim is not None and m.embedding_dim != self.embedding_dim:
            raise IncompatibleError(
                f"head ({self.kind}) was trained on {self.embedding_dim}-d embeddings of backbone "
                f"{self.backbone!r}, but store {store.path} holds {m.embedding_dim}-d embeddings of {m.backbone!r}; "
                f"re-extract the audio with --model {self.backbone} or train a head on this store")
        if self.backbone is not None and m.backbone != self.backbone:
            raise IncompatibleError(
                f"head ({self.kind}) was trained on embeddings of backbone {self.backbone!r}, but store "
                f"{store.path} was made with {m.backbone!r}; re-extract with --model {self.backbone}")

    # ------------------------------------------------------------------ artifacts
    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the head as a directory (config.json + safetensors / LightGBM text + train_clips.json).

        Refuses a directory holding another kind of artifact (a store, an index, a fine-tuned run) and an
        existing head unless ``overwrite``. Every file is written atomically, config.json last."""
        from safetensors.numpy import save_file

        self._check_fitted()
        self._validate()
        directory = artifacts.prepare_output(directory, artifacts.HEAD, overwrite=overwrite)
        vocab = self.vocabulary
        config = {
            **artifacts.header(artifacts.HEAD, FORMAT_VERSION), "head": self.kind,
            "params": _jsonable(self.get_params(deep=False)), "multi_label": bool(self.multi_label),
            "n_labels": self.n_labels_, "vocabulary": vocab,
            "backbone": self.backbone, "embedding_dim": self.embedding_dim,
            "store_fingerprint": self.store_fingerprint, "extraction": _finite(_jsonable(dict(self.extraction))),
            "metrics": _finite(_jsonable(dict(self.metrics))),
            "thresholds": None if self.thresholds_ is None else [float(t) for t in self.thresholds_],
        }
        # weights first, config last, each atomic; the same random id in both lets load() notice weights and a
        # config from two different saves (an overwrite interrupted half-way) instead of mislabelling scores
        config["weights_id"] = uuid.uuid4().hex
        written = []
        state = {k: np.ascontiguousarray(v) for k, v in self._state().items()}
        written.append(artifacts.atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(
            state, tmp, metadata={"format": FORMAT, "kind": self.kind, "weights_id": config["weights_id"]})))
        written += self._save_extra(directory)
        if self.train_clip_ids is not None:
            ids = [str(c) for c in self.train_clip_ids]
            written.append(artifacts.atomic_write_json(directory / TRAIN_CLIPS_NAME, ids))
            config["train_clips"] = {"file": TRAIN_CLIPS_NAME, "n_clips": len(ids)}
        artifacts.atomic_write_json(directory / CONFIG_NAME, config)
        _remove_stale(directory, {Path(p) for p in written})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Head:
        """Load a head saved by :meth:`save` (any kind when called on ``Head``; that kind when on a subclass).

        A hand-edited or damaged config gives one ArtifactError naming the file and the field."""
        from safetensors import SafetensorError, safe_open
        from safetensors.numpy import load_file

        from embedtag.heads import HEADS

        info = artifacts.read_header(directory, artifacts.HEAD, FORMAT_VERSION)
        directory, cfg, cfg_path = info.path, info.meta, info.meta_path
        type_field = "head" if cfg.get("kind") == artifacts.HEAD else "kind"  # format 1 kept the type in "kind"

        def bad(field: str, what: str) -> ArtifactError:
            return ArtifactError(f"{cfg_path}: field {field!r} {what}; refit the head with `embedtag fit-head`")

        def field(name: str, ok, expected: str, required: bool = True, default=None):
            if name not in cfg:
                if required:
                    raise bad(name, "is missing")
                return default
            value = cfg[name]
            if not ok(value):
                raise bad(name, f"must be {expected}, got {value!r}"[:300])
            return value

        kind = field(type_field, lambda v: isinstance(v, str), "a head type")
        if kind not in HEADS:
            raise bad(type_field, f"names an unknown head type {kind!r} (known: {', '.join(HEADS)})")
        klass = HEADS[kind]
        if cls is not Head and not issubclass(klass, cls):
            raise ArtifactError(f"{directory} holds a {kind} head, not a {cls.kind or cls.__name__} head")
        params = field("params", lambda v: isinstance(v, dict), "an object of head parameters")
        known = klass._get_param_names()
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise bad("params", f"has unknown parameter {unknown[0]!r} for a {kind} head (known: {', '.join(known)})")
        vocab = field("vocabulary", lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(x, str)
                                                                                          for x in v),
                      "a non-empty list of label names")
        if len(set(vocab)) != len(vocab):
            raise bad("vocabulary", "names a label twice")
        n_labels = field("n_labels", is_int, "an integer", required=False, default=len(vocab))
        if n_labels != len(vocab):
            raise bad("vocabulary", f"has {len(vocab)} labels but n_labels is {n_labels}")
        multi_label = field("multi_label", is_bool, "true or false", required=False,
                            default=params.get("multi_label", True))
        dim = field("embedding_dim", lambda v: is_int(v) and v >= 1, "a positive integer")
        backbone = field("backbone", lambda v: v is None or isinstance(v, str), "a backbone name or null",
                         required=False)
        fingerprint = field("store_fingerprint", lambda v: v is None or isinstance(v, str), "a string or null",
                            required=False)
        metrics = field("metrics", lambda v: v is None or isinstance(v, dict), "an object", required=False)
        extraction = field("extraction", lambda v: v is None or isinstance(v, dict), "an object", required=False)
        clips = field("train_clips", lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("file"), str)),
                      'an object {"file": ..., "n_clips": ...}', required=False)

        params = {**params, "multi_label": multi_label}
        defaults = {k: p.default for k, p in _init_signature(klass).items()}
        # JSON has no tuples: give back a tuple where the default is one, so get_params() round-trips
        params = {k: tuple(v) if isinstance(v, list) and isinstance(defaults.get(k), tuple) else v
                  for k, v in params.items()}
        head = klass(**params)
        try:
            head._validate()
        except ParamError as exc:
            raise bad("params", f"is invalid: {exc}") from None
        head.classes_ = np.asarray(vocab, dtype=object)
        head.n_labels_ = len(vocab)
        head.n_features_in_ = int(dim)
        if backbone is not None:
            head.backbone = backbone
        if fingerprint is not None:
            head.store_fingerprint = fingerprint
        head.metrics = dict(metrics or {})
        head.extraction = dict(extraction or {})
        if clips is not None:
            head.train_clip_ids = _read_train_clips(directory / clips["file"], cfg_path)

        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise ArtifactError(f"{weights} is missing (the {kind} head's weights); refit the head")
        weights_id = field("weights_id", lambda v: isinstance(v, str), "a string", required=False)
        try:
            if weights_id is not None:
                with safe_open(str(weights), framework="numpy") as f:
                    if (f.metadata() or {}).get("weights_id") != weights_id:
                        raise ArtifactError(f"{weights} was not saved together with {cfg_path} (an interrupted "
                                            "save?); save or fit the head again")
            state = load_file(str(weights))
        except (SafetensorError, OSError) as exc:
            raise ArtifactError(f"{weights} is corrupt: {exc}") from None
        try:
            head._set_state(state)
            head._load_extra(directory)
            probe = head.predict_proba(np.zeros((1, head.n_features_in_), np.float32))
            if probe.shape != (1, len(vocab)):
                raise ValueError(f"the weights score {probe.shape[1]} labels")
        except ArtifactError:
            raise
        except Exception as exc:  # a weights file that does not fit the config: say so in one line
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(f"{weights} does not match {cfg_path} (vocabulary of {len(vocab)} labels, "
                                f"embedding_dim {dim}): {msg}; refit the head") from None
        # checked after the weights, so that a vocabulary edited by hand is reported as a mismatch with them
        thresholds = field("thresholds", lambda v: v is None or (
            isinstance(v, list) and len(v) == len(vocab) and all(is_number(t) and 0 <= t <= 1 for t in v)),
            f"null or a list of {len(vocab)} numbers in [0, 1]", required=False)
        if thresholds is not None:
            head.thresholds_ = [float(t) for t in thresholds]
        return head

def _init_signature(klass) -> dict:
    import inspect

    return {k: p for k, p in inspect.signature(klass.__init__).parameters.items() if k != "self"}


def _read_train_clips(path: Path, cfg_path: Path) -> list[str]:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing (the clip ids {cfg_path} says the head was trained on); restore "
                            "it, or remove 'train_clips' from the config")
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{path} is corrupt: {exc}") from None
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise ArtifactError(f"{path} is corrupt: expected a JSON list of clip ids")
    return ids


def _remove_stale(directory: Path, written: set[Path]) -> None:
    """After an overwrite, remove the files of the previous head that the new one does not use (only files a
    head writes: its weights, LightGBM models, train_clips.json)."""
    candidates = [directory / WEIGHTS_NAME, directory / TRAIN_CLIPS_NAME]
    # LightGBM models, of the head itself or of an auto head's members (member_<i>/lightgbm/)
    subs = [directory / "lightgbm", *(m / "lightgbm" for m in directory.glob("member_*") if m.is_dir())]
    for sub in subs:
        if sub.is_dir():
            candidates += list(sub.glob("label_*.txt"))
    for p in candidates:
        if p.is_file() and p not in written:
            p.unlink()
    for sub in subs:
        for d in (sub, sub.parent):  # empty folders go too; a folder still holding someone's file stays
            if d.is_dir() and d != directory and not any(d.iterdir()):
                d.rmdir()


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _finite(v):
    """NaN / inf -> None in metrics (JSON has no NaN; a metric that could not be computed is unknown)."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
