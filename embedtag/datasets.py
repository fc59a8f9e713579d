"""Labelled audio datasets: one :class:`Dataset` whatever the layout on disk.

Layouts read (``load_dataset(path)`` picks one):

* **FSDKaggle2019**: ``train_curated.csv`` / ``train_noisy.csv`` (or their ``*_post_competition.csv`` names),
  the test labels ``test_post_competition.csv`` or, without them, ``sample_submission.csv``; audio in
  ``train_curated/``, ``train_noisy/`` and ``test/``; ``vocabulary.csv`` (``idx,label``, no header) gives the label
  order (the Kaggle submission column order). Each clip knows its subset: ``curated``, ``noisy`` or ``test``.
* **generic CSV**: ``fname,labels`` with comma-separated labels (optional ``fold`` and ``subset`` columns).
* **generic folder**: ``labels.csv`` (as above) beside ``audio/``.
* **ESC-50**: ``meta/esc50.csv`` (filename, fold, target, category) and ``audio/``.
* **folder per class**: ``ROOT/<label>/<clip>.wav``.

The vocabulary is explicit and ordered; ``to_multi_hot`` turns label lists into the matrix the heads train on.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedtag.errors import DataError

__all__ = ["Dataset", "load_dataset", "read_fsdkaggle2019", "read_labels_csv", "read_folder", "read_esc50",
           "read_folder_per_class", "to_multi_hot", "split_labels", "AUDIO_EXTENSIONS"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aiff", ".aif", ".au")
SUBSETS = ("curated", "noisy", "test")


@dataclass
class Dataset:
    """Clips with their audio path, label list, subset and fold, and the ordered label vocabulary.

    ``labels[i]`` is None when clip i carries no labels (an unlabelled test set); ``subsets[i]`` is ``"curated"``,
    ``"noisy"``, ``"test"`` or None; ``folds[i]`` is the dataset's own fold or None."""

    clip_ids: list[str]
    paths: list[str]
    labels: list[list[str] | None]
    vocabulary: list[str]
    subsets: list[str | None]
    folds: list[int | None]
    layout: str = "csv"
    root: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.clip_ids)
        for name in ("paths", "labels", "subsets", "folds"):
            if len(getattr(self, name)) != n:
                raise DataError(f"dataset {self.root}: {name} has {len(getattr(self, name))} entries for {n} clips")
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise DataError(f"dataset {self.root}: the vocabulary repeats a label")
        for s in self.subsets:
            if s is not None and s not in SUBSETS:
                raise DataError(f"dataset {self.root}: unknown subset {s!r} (expected one of {SUBSETS})")

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __repr__(self) -> str:
        counts = {s: self.subsets.count(s) for s in SUBSETS if s in self.subsets}
        return (f"Dataset({self.root!r}, layout={self.layout!r}, clips={len(self)}, labels={len(self.vocabulary)}"
                + (f", subsets={counts}" if counts else "") + ")")

    @property
    def is_multi_label(self) -> bool:
        return any(lab is not None and len(lab) > 1 for lab in self.labels)

    def multi_hot(self) -> np.ndarray:
        """(n_clips, n_labels) float32 0/1 in vocabulary order; unlabelled clips are all-zero rows."""
        return to_multi_hot(self.labels, self.vocabulary)

    def select(self, mask_or_indices) -> Dataset:
        idx = np.asarray(mask_or_indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(int)
        return Dataset([self.clip_ids[i] for i in idx], [self.paths[i] for i in idx],
                       [self.labels[i] for i in idx], list(self.vocabulary), [self.subsets[i] for i in idx],
                       [self.folds[i] for i in idx], self.layout, self.root, dict(self.extra))

    def subset(self, name: str | None) -> Dataset:
        """Only the clips of one subset (``"curated"``, ``"noisy"``, ``"test"``)."""
        return self.select(np.array([s == name for s in self.subsets], dtype=bool))

    def labelled(self) -> Dataset:
        return self.select(np.array([lab is not None for lab in self.labels], dtype=bool))

    def labels_by_id(self) -> dict[str, list[str] | None]:
        return dict(zip(self.clip_ids, self.labels))

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame({"clip_id": self.clip_ids, "path": self.paths,
                             "labels": [None if lab is None else ",".join(lab) for lab in self.labels],
                             "subset": self.subsets, "fold": self.folds})


# ---------------------------------------------------------------------------------------------------- helpers
def split_labels(value, where: str = "") -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``; empty / NaN -> None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    parts = [p.strip() for p in str(value).split(",")]
    parts = [p for p in parts if p]
    return parts or None


def to_multi_hot(label_lists, vocabulary) -> np.ndarray:
    """(n_clips, n_labels) float32 0/1 matrix in ``vocabulary`` order. ``None`` rows are all zero; a label outside
    the vocabulary is a DataError naming it."""
    index = {lab: j for j, lab in enumerate(vocabulary)}
    out = np.zeros((len(label_lists), len(vocabulary)), dtype=np.float32)
    for i, labs in enumerate(label_lists):
        for lab in labs or ():
            j = index.get(lab)
            if j is None:
                raise DataError(f"label {lab!r} of clip #{i} is not in the vocabulary of {len(vocabulary)} labels "
                                f"({', '.join(vocabulary[:5])}{', ...' if len(vocabulary) > 5 else ''})")
            out[i, j] = 1.0
    return out


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return [c.strip() for c in (reader.fieldnames or [])], rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None


def _vocab_from(label_lists) -> list[str]:
    return sorted({lab for labs in label_lists if labs for lab in labs})


def _read_vocabulary(path: Path) -> list[str]:
    """FSDKaggle2019 ``vocabulary.csv`` (``idx,label``, no header) or a one-label-per-line file."""
    vocab: list[tuple[int, str]] = []
    with open(path, newline="", encoding="utf-8") as f:
        for k, row in enumerate(csv.reader(f)):
            if not row:
                continue
            if len(row) >= 2 and row[0].strip().isdigit():
                vocab.append((int(row[0]), row[1].strip()))
            elif len(row) == 1:
                vocab.append((k, row[0].strip()))
            elif k == 0:  # a header such as "idx,label"
                continue
            else:
                raise DataError(f"{path}: line {k + 1} is not 'idx,label'")
    if not vocab:
        raise DataError(f"{path}: empty vocabulary")
    return [lab for _, lab in sorted(vocab)]


def _first(root: Path, names) -> Path | None:
    for n in names:
        if (root / n).is_file():
            return root / n
    return None


def _fold(value, where: str) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        raise DataError(f"{where}: fold {value!r} is not an integer") from None


# ---------------------------------------------------------------------------------------------------- readers
def read_labels_csv(path: str | os.PathLike, audio_dir: str | os.PathLike | None = None,
                    vocabulary: list[str] | None = None, subset: str | None = None) -> Dataset:
    """A ``fname,labels`` CSV (comma-separated labels; ``label`` is accepted too; optional ``fold`` and ``subset``
    columns). Audio paths are ``audio_dir/fname`` (default: the CSV's folder, or its ``audio/`` subfolder when the
    first listed clip is there and not beside the CSV). The vocabulary is ``vocabulary`` if given, else the sorted
    set of labels seen."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    cols, rows = _read_rows(path)
    name_col = next((c for c in ("fname", "filename", "clip_id", "file") if c in cols), None)
    label_col = next((c for c in ("labels", "label", "category") if c in cols), None)
    if name_col is None or label_col is None:
        raise DataError(f"{path}: expected columns 'fname,labels', found {','.join(cols) or 'none'}")
    if audio_dir is None:
        first = next(((r.get(name_col) or "").strip() for r in rows), "")
        beside, sub = path.parent / first, path.parent / "audio" / first
        audio_dir = path.parent / "audio" if first and not beside.exists() and sub.exists() else path.parent
    audio_dir = Path(audio_dir)
    ids, labels, subsets, folds = [], [], [], []
    for k, r in enumerate(rows):
        where = f"{path}:{k + 2}"
        fname = (r.get(name_col) or "").strip()
        if not fname:
            raise DataError(f"{where}: empty {name_col}")
        ids.append(fname)
        labels.append(split_labels(r.get(label_col), where))
        subsets.append((r.get("subset") or "").strip() or subset)
        folds.append(_fold(r.get("fold"), where))
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: clip {dup!r} is listed more than once")
    vocab = list(vocabulary) if vocabulary is not None else _vocab_from(labels)
    to_multi_hot(labels, vocab)  # validates: every label is in the vocabulary
    return Dataset(ids, [str(audio_dir / i) for i in ids], labels, vocab, subsets, folds, "csv", str(path))


def read_folder(root: str | os.PathLike, vocabulary: list[str] | None = None) -> Dataset:
    """The generic layout: ``ROOT/labels.csv`` (fname,labels) and ``ROOT/audio/``."""
    root = Path(root)
    audio = root / "audio" if (root / "audio").is_dir() else root
    ds = read_labels_csv(root / "labels.csv", audio, vocabulary)
    ds.layout, ds.root = "folder", str(root)
    return ds


def read_fsdkaggle2019(root: str | os.PathLike) -> Dataset:
    """FSDKaggle2019 (DCASE 2019 task 2): curated + noisy training clips and the test set, in vocabulary order."""
    root = Path(root)
    curated = _first(root, ["train_curated.csv", "train_curated_post_competition.csv"])
    noisy = _first(root, ["train_noisy.csv", "train_noisy_post_competition.csv"])
    test = _first(root, ["test_post_competition.csv", "test.csv"])
    sample = _first(root, ["sample_submission.csv"])
    if curated is None and noisy is None and test is None and sample is None:
        raise DataError(f"{root}: no FSDKaggle2019 files (train_curated.csv, train_noisy.csv, "
                        "test_post_competition.csv, sample_submission.csv)")
    vocab_file = _first(root, ["vocabulary.csv"])
    if vocab_file is not None:
        vocab = _read_vocabulary(vocab_file)
    elif sample is not None:  # the submission's columns are the label order
        vocab = [c for c in _read_rows(sample)[0] if c != "fname"]
    else:
        vocab = None
    parts = []
    for csv_path, subset, folder in ((curated, "curated", "train_curated"), (noisy, "noisy", "train_noisy"),
                                     (test, "test", "test")):
        if csv_path is not None:
            parts.append(read_labels_csv(csv_path, root / folder, vocab, subset=subset))
    if test is None and sample is not None:
        names = [r["fname"] for r in _read_rows(sample)[1]]
        parts.append(Dataset(names, [str(root / "test" / n) for n in names], [None] * len(names), vocab or [],
                             ["test"] * len(names), [None] * len(names), "csv", str(sample)))
    if vocab is None:
        vocab = _vocab_from([lab for p in parts for lab in p.labels])
    extra = {}
    if test is not None:
        _, rows = _read_rows(test)
        if rows and "usage" in rows[0]:
            extra["usage"] = {r["fname"]: r["usage"] for r in rows}
    ds = Dataset([c for p in parts for c in p.clip_ids], [x for p in parts for x in p.paths],
                 [x for p in parts for x in p.labels], vocab, [x for p in parts for x in p.subsets],
                 [x for p in parts for x in p.folds], "fsdkaggle2019", str(root), extra)
    if len(set(ds.clip_ids)) != len(ds):
        raise DataError(f"{root}: a clip name appears in more than one subset")
    return ds


def read_esc50(root: str | os.PathLike) -> Dataset:
    """ESC-50 / ESC-10 layout: ``meta/esc50.csv`` (filename, fold, target, category) and ``audio/``; the
    vocabulary is ordered by ``target``."""
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    cols, rows = _read_rows(meta) if meta.is_file() else ([], [])
    need = {"filename", "fold", "target", "category"}
    if not need <= set(cols):
        raise DataError(f"{meta}: expected columns {sorted(need)}, found {cols or 'no file'}")
    by_target: dict[int, str] = {}
    for k, r in enumerate(rows):
        t = int(r["target"])
        if by_target.setdefault(t, r["category"]) != r["category"]:
            raise DataError(f"{meta}:{k + 2}: target {t} names two categories")
    ids = [r["filename"] for r in rows]
    return Dataset(ids, [str(root / "audio" / i) for i in ids], [[r["category"]] for r in rows],
                   [by_target[t] for t in sorted(by_target)], [None] * len(rows),
                   [_fold(r["fold"], str(meta)) for r in rows], "esc50", str(root))


def read_folder_per_class(root: str | os.PathLike) -> Dataset:
    """``ROOT/<label>/<clip>``: each sub-folder is a label; clip ids are paths relative to ROOT."""
    root = Path(root)
    ids, labels = [], []
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for c in classes:
        for f in sorted((root / c).rglob("*")):
            if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS:
                ids.append(f.relative_to(root).as_posix())
                labels.append([c])
    if not ids:
        raise DataError(f"{root}: no audio files in per-class sub-folders")
    vocab = [c for c in classes if any(lab == [c] for lab in labels)]
    return Dataset(ids, [str(root / i) for i in ids], labels, vocab, [None] * len(ids), [None] * len(ids),
                   "folder_per_class", str(root))


def load_dataset(path: str | os.PathLike, vocabulary: list[str] | None = None) -> Dataset:
    """Read a dataset, detecting its layout (see the module docstring)."""
    path = Path(path)
    if path.is_file():
        return read_labels_csv(path, vocabulary=vocabulary)
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory")
    if _first(path, ["train_curated.csv", "train_curated_post_competition.csv", "train_noisy.csv",
                     "train_noisy_post_competition.csv", "sample_submission.csv", "test_post_competition.csv"]):
        return read_fsdkaggle2019(path)
    if (path / "meta" / "esc50.csv").is_file():
        return read_esc50(path)
    if (path / "labels.csv").is_file():
        return read_folder(path, vocabulary)
    if any(d.is_dir() for d in path.iterdir()):
        return read_folder_per_class(path)
    raise DataError(f"{path}: not a dataset (no labels.csv, FSDKaggle2019 CSVs, meta/esc50.csv or class folders)")
