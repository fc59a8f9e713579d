"""The interface every head implements, and the on-disk artifact format.

A head maps clip embeddings (n_clips, embedding_dim) to label probabilities (n_clips, n_labels), in one of two
modes: multi-label (independent sigmoids, trained with binary cross-entropy) or single-label (softmax over the
labels, each clip exactly one label).

Artifact: a directory ::

    HEAD/
      config.json          {"format": "embedtag-head", "kind", "params", "multi_label", "vocabulary", "backbone",
                            "embedding_dim", "store_fingerprint", "extraction", "metrics", "embedtag_version",
                            "created_at"}
      weights.safetensors  arrays (logistic / MLP / kNN)   |  lightgbm/label_XXX.txt (LightGBM text models)

No pickle anywhere: config is JSON, weights are safetensors or LightGBM's own text format.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from embedtag.errors import IncompatibleError, ParamError, WeightsError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
FORMAT = "embedtag-head"
FORMAT_VERSION = 1




def check_param(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ParamError(f"invalid {name}={value!r}: expected {expected}")


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


class Head:
    """Base class. Subclasses define ``kind``, ``_param_names``, ``_validate``, ``_fit``, ``_decision``
    (or ``_predict_proba``), ``_state`` (arrays to save) and ``_set_state`` (arrays loaded)."""

    kind: str = ""
    _param_names: tuple[str, ...] = ()

    def __init__(self, multi_label: bool = True, seed: int = 0):
        check_param(isinstance(multi_label, (bool, np.bool_)), "multi_label", multi_label, "True or False")
        check_param(isinstance(seed, (int, np.integer)) and seed >= 0, "seed", seed, "an integer >= 0")
        self.multi_label = bool(multi_label)
        self.seed = int(seed)
        # set by fit() / fit_head() / load()
        self.vocabulary: list[str] | None = None
        self.backbone: str | None = None
        self.embedding_dim: int | None = None
        self.store_fingerprint: str | None = None
        self.metrics: dict = {}
        #: how the training store was made (pooling, window_s, ...): predict on audio embeds the same way
        self.extraction: dict = {}
        self.n_labels_: int | None = None

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict:
        return {"multi_label": self.multi_label, "seed": self.seed,
                **{k: _jsonable(getattr(self, k)) for k in self._param_names}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ training / inference
    def fit(self, X, Y, sample_weight=None, subset=None, X_val=None, Y_val=None) -> Head:
        """Train on embeddings ``X`` (n, dim) and 0/1 targets ``Y`` (n, n_labels).

        ``sample_weight`` (n,) scales each clip's loss; ``subset`` (n,) names each clip's source (``"curated"``,
        ``"noisy"``, ...) for heads that treat noisy clips differently; ``X_val``/``Y_val`` are used for early
        stopping where the head supports it."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        Y = np.asarray(Y, dtype=np.float32)
        if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y):
            raise ParamError(f"fit: X must be (n, dim) and Y (n, n_labels) with the same n; got {X.shape}, {Y.shape}")
        if len(X) == 0:
            raise ParamError("fit: no training clips")
        if not np.all(np.isfinite(X)):
            raise ParamError("fit: embeddings contain NaN or infinite values")
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
            Y_val = np.asarray(Y_val, dtype=np.float32)
        if self.embedding_dim is not None and self.embedding_dim != X.shape[1]:
            raise IncompatibleError(f"{self.kind} head was set up for {self.embedding_dim}-d embeddings, "
                                    f"got {X.shape[1]}-d")
        self.embedding_dim = int(X.shape[1])
        self.n_labels_ = int(Y.shape[1])
        if self.vocabulary is not None and len(self.vocabulary) != self.n_labels_:
            raise ParamError(f"fit: {self.n_labels_} label columns but a vocabulary of {len(self.vocabulary)}")
        self._fit(X, Y, sample_weight, subset, X_val, Y_val)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """(n, n_labels) probabilities in vocabulary order (rows sum to 1 in single-label mode)."""
        if self.n_labels_ is None:
            raise ParamError(f"this {self.kind} head is not fitted; call fit() or load() first")
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.embedding_dim:
            raise IncompatibleError(f"{self.kind} head expects {self.embedding_dim}-d embeddings"
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

    def _save_extra(self, directory: Path) -> None:
        """Files other than weights.safetensors (LightGBM)."""

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
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the head as a directory (config.json + safetensors / LightGBM text). Overwrites its files."""
        from safetensors.numpy import save_file

        from embedtag import __version__

        if self.n_labels_ is None:
            raise ParamError("cannot save a head that is not fitted")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind, "params": self.get_params(),
            "multi_label": self.multi_label, "n_labels": self.n_labels_,
            "vocabulary": list(self.vocabulary) if self.vocabulary is not None else
            [f"label_{j}" for j in range(self.n_labels_)],
            "backbone": self.backbone, "embedding_dim": self.embedding_dim,
            "store_fingerprint": self.store_fingerprint, "extraction": _jsonable(self.extraction),
            "metrics": _jsonable(self.metrics),
            "embedtag_version": __version__, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        state = {k: np.ascontiguousarray(v) for k, v in self._state().items()}
        if state:
            save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": FORMAT, "kind": self.kind})
        self._save_extra(directory)
        tmp = directory / (CONFIG_NAME + ".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, directory / CONFIG_NAME)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Head:
        """Load a head saved by :meth:`save` (any kind when called on ``Head``; that kind when on a subclass)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        directory = Path(directory)
        cfg_path = directory / CONFIG_NAME
        if not cfg_path.is_file():
            raise WeightsError(f"{directory} is not a head (no {CONFIG_NAME}); train one with `embedtag fit-head`")
        try:
            cfg = json.loads(cfg_path.read_text())
        except ValueError as exc:
            raise WeightsError(f"{cfg_path} is corrupt: {exc}") from None
        if cfg.get("format") != FORMAT:
            raise WeightsError(f"{cfg_path} is not an embedtag head config")
        if cfg.get("format_version", 1) > FORMAT_VERSION:
            raise WeightsError(f"{directory} was written by a newer embedtag; upgrade embedtag")
        from embedtag.heads import HEADS

        kind = cfg.get("kind")
        if kind not in HEADS:
            raise WeightsError(f"{cfg_path}: unknown head kind {kind!r} (known: {', '.join(HEADS)})")
        klass = HEADS[kind]
        if cls is not Head and not issubclass(klass, cls):
            raise WeightsError(f"{directory} holds a {kind} head, not a {cls.kind or cls.__name__} head")
        head = klass(**cfg["params"])
        head.vocabulary = list(cfg["vocabulary"])
        head.backbone = cfg.get("backbone")
        head.embedding_dim = cfg.get("embedding_dim")
        head.store_fingerprint = cfg.get("store_fingerprint")
        head.metrics = cfg.get("metrics") or {}
        head.extraction = cfg.get("extraction") or {}
        head.n_labels_ = int(cfg["n_labels"])
        state = {}
        if (directory / WEIGHTS_NAME).is_file():
            try:
                state = load_file(str(directory / WEIGHTS_NAME))
            except (SafetensorError, OSError) as exc:
                raise WeightsError(f"{directory / WEIGHTS_NAME} is corrupt: {exc}") from None
        head._set_state(state)
        head._load_extra(directory)
        return head


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
