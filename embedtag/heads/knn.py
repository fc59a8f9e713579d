"""k-nearest neighbours over FAISS: cosine similarity (``IndexFlatIP`` on L2-normalised embeddings); a clip's
label probabilities are the similarity-weighted vote of its k nearest training clips' labels."""

from __future__ import annotations

import numpy as np

from embedtag.heads.base import Head, check_param, is_bool, is_int, is_number


def _normalise(X: np.ndarray) -> np.ndarray:
    X = np.array(X, dtype=np.float32, copy=True)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    X /= np.maximum(norms, 1e-12)
    return X


class KNNHead(Head):
    """``k`` neighbours; each votes with weight ``exp(similarity / temperature) * sample_weight``.

    ``center`` subtracts the training mean before normalising (cosine on centred embeddings separates classes
    better when every embedding shares a large common component, as pooled CNN features do)."""

    kind = "knn"

    def __init__(self, k: int = 10, temperature: float = 0.1, center: bool = True, multi_label: bool = True,
                 seed: int = 0):
        super().__init__(multi_label=multi_label, seed=seed)
        self.k = k
        self.temperature = temperature
        self.center = center

    def _validate_params(self):
        check_param(is_int(self.k) and self.k >= 1, "k", self.k, "an integer >= 1")
        check_param(is_number(self.temperature) and self.temperature > 0, "temperature", self.temperature,
                    "a finite number > 0")
        check_param(is_bool(self.center), "center", self.center, "True or False")

    def _fit(self, X, Y, sample_weight, subset, X_val, Y_val):
        self.mean_ = X.mean(0).astype(np.float32) if self.center else np.zeros(X.shape[1], np.float32)
        self.vectors_ = _normalise(X - self.mean_)
        self.targets_ = Y.astype(np.float32)
        self.weights_ = sample_weight.astype(np.float32)
        self._build_index()

    def _build_index(self):
        import faiss

        self.index_ = faiss.IndexFlatIP(self.vectors_.shape[1])
        self.index_.add(self.vectors_)

    def _predict_proba(self, X):
        k = min(int(self.k), len(self.vectors_))
        sims, idx = self.index_.search(_normalise(X - self.mean_), k)
        # subtract each row's best similarity before exp: same weights, no overflow at small temperatures
        w = np.exp((sims - sims[:, :1]) / float(self.temperature)) * self.weights_[idx]
        votes = np.einsum("nk,nkl->nl", w, self.targets_[idx])
        p = votes / np.maximum(w.sum(1, keepdims=True), 1e-12)
        if not self.multi_label:
            p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
        return p

    def _state(self):
        return {"vectors": self.vectors_, "targets": self.targets_, "weights": self.weights_, "mean": self.mean_}

    def _set_state(self, state):
        self.vectors_, self.targets_ = state["vectors"], state["targets"]
        self.weights_, self.mean_ = state["weights"], state["mean"]
        self._build_index()
