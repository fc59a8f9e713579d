"""Preprocessing of embeddings before indexing: none, centring, PCA whitening; then the metric's last step.

Centring matters for post-ReLU embeddings (PANNs, YAMNet): every coordinate is non-negative, so raw cosines are
all positive and crowd together; subtracting the mean spreads them out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedtag.errors import ArtifactError, DataError, ParamError

PREPROCESSING = ("none", "center", "whiten")
METRICS = ("cosine", "l2")


def check_choice(name: str, value, choices: Iterable[str]) -> None:
    """ParamError (a ValueError) unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ParamError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def to_index_space(x: np.ndarray, metric: str) -> np.ndarray:
    """The last step into index space, after preprocessing: L2-normalise rows for cosine (a zero vector stays
    zero); nothing for l2."""
    x = np.ascontiguousarray(x, np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(x, np.float32)


@dataclass
class Preprocessor:
    """Centring / PCA whitening fitted on the store; ``transform`` maps raw embeddings to index space.

    ``whiten``: ``x -> (x - mean) @ V_k / sqrt(lambda_k + eps * lambda_1)`` with the top ``n_components``
    eigenpairs of the store covariance. ``eps`` (relative to the largest eigenvalue) keeps the many near-zero
    directions of a small store from being blown up into noise.
    """

    kind: str = "none"
    dim: int = 0
    mean: np.ndarray | None = None
    #: (dim, n_components) whitening matrix, for kind="whiten"
    matrix: np.ndarray | None = None
    n_components: int | None = None
    eps: float = 0.0
    n_fit: int = 0

    @classmethod
    def fit(cls, x: np.ndarray, kind: str = "none", *, n_components: int | None = None,
            eps: float = 0.1) -> Preprocessor:
        check_choice("preprocess", kind, PREPROCESSING)
        x = np.asarray(x, np.float32)
        n, dim = x.shape
        if kind == "none":
            return cls("none", dim)
        if n < 2:
            raise DataError(f"preprocess={kind!r} needs at least 2 clips to fit, got {n}")
        mean = x.astype(np.float64).mean(axis=0)
        if kind == "center":
            return cls("center", dim, mean.astype(np.float32), n_fit=n)
        if not eps >= 0:
            raise ParamError(f"eps must be >= 0, got {eps}")
        max_k = min(dim, n - 1)
        k = max_k if n_components is None else int(n_components)
        if not 1 <= k <= max_k:
            raise ParamError(f"n_components must be in [1, {max_k}] (min(dim, n_clips - 1)), got {n_components}")
        xc = x.astype(np.float64) - mean
        cov = xc.T @ xc / (n - 1)
        evals, evecs = np.linalg.eigh(cov)  # ascending
        order = np.argsort(evals)[::-1][:k]
        evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
        scale = 1.0 / np.sqrt(evals + eps * evals[0] + 1e-12)
        matrix = np.ascontiguousarray(evecs * scale, np.float32)
        return cls("whiten", dim, mean.astype(np.float32), matrix, k, float(eps), n)

    @property
    def out_dim(self) -> int:
        return self.matrix.shape[1] if self.matrix is not None else self.dim

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.kind == "none":
            return np.ascontiguousarray(x)
        x = x - self.mean
        if self.kind == "whiten":
            x = x @ self.matrix
        return np.ascontiguousarray(x, np.float32)

    def params(self) -> dict:
        return {"kind": self.kind, "n_components": self.n_components, "eps": self.eps, "n_fit": self.n_fit}

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        # safetensors writes the raw buffer: a strided view (eigenvector columns) must be made contiguous first
        tensors = {k: np.ascontiguousarray(v) for k, v in (("mean", self.mean), ("matrix", self.matrix))
                   if v is not None}
        if tensors:
            save_file(tensors, str(path))

    @classmethod
    def load(cls, path: Path, params: dict, dim: int) -> Preprocessor:
        """Read what :meth:`save` wrote; ArtifactError naming the file when it is missing, corrupt or does not
        fit ``dim``."""
        kind = params.get("kind", "none")
        tensors: dict = {}
        if kind != "none":
            if not path.is_file():
                raise ArtifactError(f"{path} is missing (preprocess={kind!r})")
            from safetensors.numpy import load_file

            try:
                tensors = load_file(str(path))
            except Exception as exc:  # safetensors raises its own SafetensorError and OSError
                raise ArtifactError(f"{path}: not a readable safetensors file ({exc})") from None
            mean, matrix = tensors.get("mean"), tensors.get("matrix")
            if mean is None or mean.shape != (dim,):
                raise ArtifactError(f"{path}: tensor 'mean' must have shape ({dim},), got "
                                    f"{None if mean is None else mean.shape}")
            if kind == "whiten" and (matrix is None or matrix.ndim != 2 or matrix.shape[0] != dim):
                raise ArtifactError(f"{path}: tensor 'matrix' must have shape ({dim}, n_components), got "
                                    f"{None if matrix is None else matrix.shape}")
        return cls(kind, dim, tensors.get("mean"), tensors.get("matrix"), params.get("n_components"),
                   float(params.get("eps", 0.0)), int(params.get("n_fit", 0)))
