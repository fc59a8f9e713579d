"""Audio for fine-tuning: decode every clip once, then cut training crops and test-time crops from memory."""

from __future__ import annotations

import numpy as np

from embedtag.errors import DataError
from embedtag.inputs import Dataset, dataset_for_audio


def resolve_dataset(data, labels=None) -> Dataset:
    """``data`` a dataset folder/CSV (see :func:`embedtag.inputs.load_dataset`) or an already-read Dataset;
    with ``labels`` (a fname,labels CSV), ``data`` is the audio folder those file names are relative to. Listed
    files outside the dataset folder, or a dataset whose files mostly do not exist, are refused here
    (:func:`embedtag.inputs.dataset_for_audio`)."""
    return dataset_for_audio(data, labels=labels)


def load_waves(paths, sample_rate: int, progress: bool = False, on_error=None) -> list[np.ndarray | None]:
    """Decode and resample every file. Without ``on_error`` the first unreadable file raises (AudioError naming
    it); with ``on_error(i, exc)`` it is reported there, its entry is None, and the other files are still read
    (as ``extract`` records a bad file and goes on)."""
    from embedtag.embeddings.audio import load_audio
    from embedtag.errors import AudioError, EmbedtagError

    items = list(paths)
    if progress:
        from rich.progress import track

        items = track(items, description="decoding audio", transient=True)
    out: list[np.ndarray | None] = []
    for i, p in enumerate(items):
        try:
            out.append(load_audio(p, sample_rate)[0])
        except Exception as exc:
            if on_error is None:
                raise
            if not isinstance(exc, EmbedtagError):  # an unexpected decoder failure is still one bad file
                exc = AudioError(p, f"{type(exc).__name__}: {exc}")
            on_error(i, exc)
            out.append(None)
    return out


def train_crop(wave: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``n``-sample crop; a shorter clip is zero-padded at a random offset (a time-shift augmentation)."""
    if len(wave) >= n:
        start = int(rng.integers(0, len(wave) - n + 1))
        return wave[start:start + n]
    out = np.zeros(n, np.float32)
    start = int(rng.integers(0, n - len(wave) + 1))
    out[start:start + len(wave)] = wave
    return out


def eval_crops(wave: np.ndarray, n: int, max_crops: int) -> np.ndarray:
    """(k, n) evenly spaced crops covering the clip (k <= max_crops); a short clip is one zero-padded crop."""
    if len(wave) <= n:
        out = np.zeros((1, n), np.float32)
        out[0, :len(wave)] = wave
        return out
    k = min(max_crops, int(np.ceil(len(wave) / n)))
    starts = np.linspace(0, len(wave) - n, k).round().astype(int)
    return np.stack([wave[s:s + n] for s in starts])


def check_trainable(ds: Dataset) -> None:
    if not ds.vocabulary:
        raise DataError(f"dataset {ds.root}: no labels to learn")
    if not any(lab for lab in ds.labels):
        raise DataError(f"dataset {ds.root}: no labelled clips")
