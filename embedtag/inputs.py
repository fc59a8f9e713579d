"""Inputs: the one place that turns what a user names (audio files, folders, CSVs, dataset layouts) into clips.

Every entry point (``extract``, ``predict`` on audio, ``fit-head`` / ``evaluate --labels``, ``profile``,
``finetune``, ``benchmark``, ``split``) resolves its inputs here, so each accepts the same things and gives a clip
the same id.

**What an input can be**

* **a dataset folder**, detected in this order:

  - *FSDKaggle2019*: ``train_curated.csv`` / ``train_noisy.csv`` (or their ``*_post_competition.csv`` names), the
    test labels ``test_post_competition.csv`` or, without them, ``sample_submission.csv``; audio in
    ``train_curated/``, ``train_noisy/`` and ``test/``; ``vocabulary.csv`` (``idx,label``, no header) gives the
    label order. Each clip knows its subset: ``curated``, ``noisy`` or ``test``;
  - *ESC-50*: ``meta/esc50.csv`` (filename, fold, target, category) and ``audio/``;
  - *labels.csv* (a label table, below) beside ``audio/`` (or beside the audio itself);
  - *folder per class*: ``ROOT/<label>/.../<clip>`` when **no audio file lies loose in ROOT**; the clip's label is
    its top sub-folder;
  - otherwise *a plain folder of audio*: every file below it, unlabelled.

  A folder of loose files plus one sub-folder is therefore a plain folder (every file, unlabelled) for every
  command; clip ids are paths relative to the folder (``sub/x.wav``) in every layout walked.
* **a label table** (``.csv``): a header with a clip column (``fname``, ``filename``, ``clip_id`` or ``file``) and
  optionally a label column (``labels``, ``label`` or ``category``; several labels comma-separated inside one
  field), ``fold``, ``subset`` and ``path`` columns. UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8");
  any other encoding is one error naming the file. An empty label field means *unlabelled* (None), everywhere.
  A clip listed twice is an error naming the lines. The audio of ``x.csv`` is looked for beside it, in ``audio/``
  beside it, and in the folder named like it (``train_curated.csv`` -> ``train_curated/``, FSDKaggle2019's own
  layout); the candidate holding most of the listed files wins. A ``path`` column overrides that per clip.
* **audio files**: the clip id is the file name.

**Rules**

* Walking a folder skips hidden files and folders (``.name``), sidecar files (``labels.csv``, ``meta.csv``,
  ``SOURCE.txt``, ``README*``, ``LICENSE*``, ``manifest.json``, ``vocabulary.csv``), the ``exclude`` folders (the
  store being written) and every embedtag artifact folder (store, index, head, run). Symlinked sub-folders are
  followed; a link back to a folder already being walked is not followed twice.
* Files without an audio extension (:data:`AUDIO_EXTENSIONS`, what libsndfile decodes) are not audio: ``extract``
  records each as a failed clip ("unsupported file type") so that none is silently ignored; readers that want
  audio only (predict, profile, finetune, :func:`load_dataset`) skip them.
* Several inputs: clip ids are paths relative to the common folder of the inputs (``extract d1 d2`` gives
  ``d1/x.wav`` and ``d2/x.wav``); two different files that still get one id are an error listing the clashes.
  The same file named twice is one clip.
* A listed path (CSV ``fname`` or ``path``) must lie inside the dataset's folder (the CSV's folder, or the dataset
  folder an ``embedtag split`` CSV was made from) unless ``allow_outside_root=True``; stored paths are absolute.
* A CSV whose listed files mostly do not exist (more than half, and at least :data:`MIN_MISSING_FOR_ERROR`) is one
  error before any work, saying where the audio was looked for; a few missing files stay per-clip failures.
* Clip matching (:func:`match_clips`): by clip id, else by file name when that name is unique on both sides; a
  name that is not is an error listing examples, never a silent first pick.
* File names that are not valid UTF-8 are kept (``os.fsdecode``, so the file still opens); the clip id is made
  valid UTF-8 with :func:`safe_text`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedtag.embeddings.audio import AUDIO_EXTENSIONS as _DECODABLE
from embedtag.errors import DataError, ParamError

__all__ = ["AUDIO_EXTENSIONS", "SIDECARS", "ClipSource", "Dataset", "resolve_sources", "audio_files",
           "load_dataset", "read_label_table", "read_labels_csv", "read_folder", "read_fsdkaggle2019", "read_esc50",
           "read_folder_per_class", "read_audio_folder", "match_clips", "split_dataset", "to_multi_hot",
           "split_labels", "walk_files", "safe_text", "is_audio", "check_inside_root", "check_audio_present",
           "dataset_for_audio"]

#: What the decoder (libsndfile, through embedtag.embeddings.audio) reads. Not .m4a/.aac: libsndfile has no AAC.
AUDIO_EXTENSIONS: tuple[str, ...] = tuple(sorted(_DECODABLE))
SUBSETS = ("curated", "noisy", "test")
#: files of dataset folders that are not audio and not worth an error row (compared lower-case)
SIDECARS = frozenset({"labels.csv", "meta.csv", "source.txt", "manifest.json", "vocabulary.csv", "split.json",
                      "thumbs.db", "desktop.ini"})
_SIDECAR_PREFIXES = ("readme", "license", "licence")
#: a CSV is refused as a whole when more than half of its files are missing and at least this many
MIN_MISSING_FOR_ERROR = 3
NAME_COLUMNS = ("fname", "filename", "clip_id", "file")
LABEL_COLUMNS = ("labels", "label", "category")
_FSD_NAMES = ("train_curated.csv", "train_curated_post_competition.csv", "train_noisy.csv",
              "train_noisy_post_competition.csv", "sample_submission.csv", "test_post_competition.csv")


# ------------------------------------------------------------------------------------------------ types
@dataclass
class ClipSource:
    """One input clip: a file (``path``, absolute) or samples in memory (``samples`` at ``sample_rate``)."""

    clip_id: str
    path: str = ""
    labels: list[str] | None = None
    samples: np.ndarray | None = None
    sample_rate: int | None = None


@dataclass
class Dataset:
    """Clips with their audio path, label list, subset and fold, and the ordered label vocabulary.

    ``labels[i]`` is None when clip i carries no labels (an unlabelled test set); ``subsets[i]`` is ``"curated"``,
    ``"noisy"``, ``"test"`` or None; ``folds[i]`` is the dataset's own fold or None. ``paths`` are absolute.
    ``extra["roots"]`` lists the folders the paths must lie in (see :func:`check_inside_root`)."""

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
        return to_multi_hot(self.labels, self.vocabulary, self.clip_ids)

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

    def sources(self) -> list[ClipSource]:
        """The clips as :class:`ClipSource` (what ``extract`` embeds)."""
        return [ClipSource(c, p, lab) for c, p, lab in zip(self.clip_ids, self.paths, self.labels)]

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame({"clip_id": self.clip_ids, "path": self.paths,
                             "labels": [None if lab is None else ",".join(lab) for lab in self.labels],
                             "subset": self.subsets, "fold": self.folds})


# ------------------------------------------------------------------------------------------------ small helpers
def safe_text(s) -> str:
    """``s`` as valid UTF-8 text, for ids, display and storage (Parquet needs it). Bytes of a file name that are
    not UTF-8 (which ``os.fsdecode`` keeps as lone surrogates) are written as ``\\xNN`` escapes, so two such names
    stay distinct and :func:`embedtag.store.resolve_path` finds the file again; open files with the original
    string."""
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    s = str(s)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system produced: keep it visible as an escape
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def is_audio(path: str | os.PathLike) -> bool:
    """True when the extension is one the decoder reads (:data:`AUDIO_EXTENSIONS`)."""
    return os.path.splitext(os.fspath(path))[1].lower() in AUDIO_EXTENSIONS


def _is_sidecar(name: str) -> bool:
    low = name.lower()
    return low in SIDECARS or low.startswith(_SIDECAR_PREFIXES)


def _abs(p) -> str:
    """Absolute and normalised (``..`` collapsed) without resolving symlinks."""
    return os.path.abspath(os.fspath(p))


def split_labels(value, where: str = "") -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``; empty / NaN / None -> None (unlabelled)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        parts = [str(v).strip() for v in value]
    else:
        parts = [p.strip() for p in str(value).split(",")]
    parts = [p for p in parts if p]
    return parts or None


def to_multi_hot(label_lists, vocabulary, clip_ids: Sequence[str] | None = None) -> np.ndarray:
    """(n_clips, n_labels) float32 0/1 matrix in ``vocabulary`` order. ``None`` rows are all zero; a label outside
    the vocabulary is a DataError naming it (and the clip, when ``clip_ids`` are given)."""
    index = {lab: j for j, lab in enumerate(vocabulary)}
    out = np.zeros((len(label_lists), len(vocabulary)), dtype=np.float32)
    for i, labs in enumerate(label_lists):
        for lab in labs or ():
            j = index.get(lab)
            if j is None:
                who = repr(clip_ids[i]) if clip_ids is not None else f"#{i}"
                raise DataError(f"label {lab!r} of clip {who} is not in the vocabulary of {len(vocabulary)} labels "
                                f"({', '.join(vocabulary[:5])}{', ...' if len(vocabulary) > 5 else ''})")
            out[i, j] = 1.0
    return out


def _vocab_from(label_lists) -> list[str]:
    return sorted({lab for labs in label_lists if labs for lab in labs})


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


# ------------------------------------------------------------------------------------------------ walking
def walk_files(root: str | os.PathLike, exclude: Iterable[str | os.PathLike] = (), *,
               audio_only: bool = False) -> list[tuple[str, str]]:
    """``[(relative posix path, absolute path)]`` of the files below ``root``, sorted by relative path.

    Skips hidden files and folders, sidecar files, the ``exclude`` folders and embedtag artifact folders; follows
    symlinked sub-folders once (a link back to a folder on the current walk is not followed again)."""
    from embedtag.artifacts import identify
    from embedtag.errors import ArtifactError

    root_abs = _abs(root)
    excluded = {os.path.realpath(e) for e in map(os.fspath, exclude)}
    out: list[tuple[str, str]] = []

    def is_artifact(d: str) -> bool:
        try:
            return identify(d) is not None
        except ArtifactError:
            return False

    def walk(d: str, rel: str, ancestors: frozenset) -> None:
        real = os.path.realpath(d)
        if real in ancestors or real in excluded:
            return
        if rel and is_artifact(d):
            return
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"cannot read folder {safe_text(d)}: {exc.strerror or exc}") from None
        for e in entries:
            if e.name.startswith("."):
                continue
            r = f"{rel}/{e.name}" if rel else e.name
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                walk(e.path, r, ancestors | {real})
            elif not _is_sidecar(e.name) and (not audio_only or is_audio(e.name)):
                out.append((r, _abs(e.path)))

    walk(root_abs, "", frozenset())
    out.sort(key=lambda t: t[0])
    return out


# ------------------------------------------------------------------------------------------------ label tables
def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and ``(line number, row)`` pairs of a UTF-8 CSV (a byte-order mark is accepted)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = []
            for row in reader:
                rows.append((reader.line_num, {(k or "").strip(): v for k, v in row.items()}))
            cols = [c.strip() for c in (reader.fieldnames or [])]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                        "save it as UTF-8 (in Excel: 'CSV UTF-8')") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return cols, rows


def _table_columns(path: Path, cols: list[str], need_labels: bool) -> tuple[str, str | None]:
    name_col = next((c for c in NAME_COLUMNS if c in cols), None)
    label_col = next((c for c in LABEL_COLUMNS if c in cols), None)
    if name_col is None or (need_labels and label_col is None):
        raise DataError(f"{path}: expected columns 'fname,labels' (clip column: {'/'.join(NAME_COLUMNS)}; labels: "
                        f"{'/'.join(LABEL_COLUMNS)}), found {','.join(cols) or 'none'}")
    return name_col, label_col


def _check_unique(path: Path, names: list[str], lines: list[int]) -> None:
    seen: dict[str, list[int]] = {}
    for n, ln in zip(names, lines):
        seen.setdefault(n, []).append(ln)
    dups = {n: ls for n, ls in seen.items() if len(ls) > 1}
    if dups:
        ex = "; ".join(f"{n!r} on lines {', '.join(map(str, ls))}" for n, ls in list(dups.items())[:5])
        raise DataError(f"{path}: {len(dups)} clip(s) listed more than once ({ex}"
                        f"{'; ...' if len(dups) > 5 else ''}); list each clip once")


def read_label_table(path: str | os.PathLike) -> dict[str, list[str] | None]:
    """A label table (see the module docstring) as ``{clip: [label, ...] or None}``, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    cols, rows = _read_rows(path)
    name_col, label_col = _table_columns(path, cols, need_labels=False)
    names, lines, labels = [], [], []
    for ln, r in rows:
        fname = (r.get(name_col) or "").strip()
        if not fname:
            raise DataError(f"{path}:{ln}: empty {name_col}")
        names.append(fname)
        lines.append(ln)
        labels.append(split_labels(r.get(label_col)) if label_col else None)
    _check_unique(path, names, lines)
    return dict(zip(names, labels))


def _split_roots(folder: Path) -> list[str]:
    """The dataset folder an ``embedtag split`` output folder was made from (its paths may point there)."""
    meta = folder / "split.json"
    if not meta.is_file():
        return []
    try:
        roots = json.loads(meta.read_text(encoding="utf-8")).get("dataset_roots")
    except (OSError, ValueError, AttributeError):
        return []
    return [_abs(r) for r in roots if isinstance(r, str) and r] if isinstance(roots, list) else []


def _audio_candidates(path: Path) -> list[Path]:
    stem = path.stem
    names = [stem]
    if stem.endswith("_post_competition"):  # FSDKaggle2019's metadata names its audio folders without the suffix
        names.insert(0, stem[: -len("_post_competition")])
    out = [path.parent, path.parent / "audio"] + [path.parent / n for n in names]
    seen, uniq = set(), []
    for c in out:
        if str(c) not in seen:
            seen.add(str(c))
            uniq.append(c)
    return uniq


def _pick_audio_dir(path: Path, names: list[str]) -> tuple[Path, list[Path]]:
    """The candidate folder holding most of the listed files (first candidate on a tie); the candidates."""
    cands = _audio_candidates(path)
    present = [c for c in cands if c.is_dir()]
    if not names or len(present) <= 1:
        return (present[0] if present else path.parent), cands
    step = max(1, len(names) // 200)  # a sample is enough to tell the folders apart
    sample = names[::step]
    best, best_n = present[0], -1
    for c in present:
        n = sum(os.path.exists(os.path.join(c, x)) for x in sample)
        if n > best_n:
            best, best_n = c, n
    return best, cands


def read_labels_csv(path: str | os.PathLike, audio_dir: str | os.PathLike | None = None,
                    vocabulary: list[str] | None = None, subset: str | None = None) -> Dataset:
    """A label table as a :class:`Dataset`. Audio paths are ``audio_dir/fname`` (default: see the module
    docstring: beside the CSV, its ``audio/`` folder, or the folder named like it), or the ``path`` column. The
    vocabulary is ``vocabulary`` if given, else the sorted set of labels seen."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    cols, rows = _read_rows(path)
    name_col, label_col = _table_columns(path, cols, need_labels=False)
    ids, lines, labels, subsets, folds, given = [], [], [], [], [], []
    for ln, r in rows:
        where = f"{path}:{ln}"
        fname = (r.get(name_col) or "").strip()
        if not fname:
            raise DataError(f"{where}: empty {name_col}")
        ids.append(fname)
        lines.append(ln)
        labels.append(split_labels(r.get(label_col), where) if label_col else None)
        s = (r.get("subset") or "").strip() or subset
        subsets.append(s)
        folds.append(_fold(r.get("fold"), where))
        given.append((r.get("path") or "").strip())
    _check_unique(path, ids, lines)
    if audio_dir is None:
        base, cands = _pick_audio_dir(path, [i for i, g in zip(ids, given) if not g])
    else:
        base, cands = Path(audio_dir), [Path(audio_dir)]
    paths = [_abs(os.path.join(path.parent, g) if g else os.path.join(base, i)) for i, g in zip(ids, given)]
    vocab = list(vocabulary) if vocabulary is not None else _vocab_from(labels)
    to_multi_hot(labels, vocab, ids)  # validates: every label is in the vocabulary
    roots = [_abs(path.parent)] + _split_roots(path.parent)
    if audio_dir is not None:
        roots.append(_abs(audio_dir))  # a folder the caller named is inside by definition
    return Dataset(ids, paths, labels, vocab, subsets, folds, "csv", str(path),
                   {"roots": roots, "looked_in": [str(c) for c in cands], "table": str(path)})


def read_folder(root: str | os.PathLike, vocabulary: list[str] | None = None) -> Dataset:
    """The generic layout: ``ROOT/labels.csv`` (a label table) and ``ROOT/audio/`` (or the audio beside it)."""
    root = Path(root)
    ds = read_labels_csv(root / "labels.csv", vocabulary=vocabulary)
    ds.layout, ds.root = "folder", str(root)
    return ds


def _read_vocabulary(path: Path) -> list[str]:
    """FSDKaggle2019 ``vocabulary.csv`` (``idx,label``, no header) or a one-label-per-line file."""
    vocab: list[tuple[int, str]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the vocabulary ({exc})") from None
    for k, row in enumerate(lines):
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
        names = [r["fname"] for _, r in _read_rows(sample)[1]]
        parts.append(Dataset(names, [_abs(root / "test" / n) for n in names], [None] * len(names), vocab or [],
                             ["test"] * len(names), [None] * len(names), "csv", str(sample)))
    if vocab is None:
        vocab = _vocab_from([lab for p in parts for lab in p.labels])
    extra: dict = {"roots": [_abs(root)],
                   "looked_in": [str(root / f) for f in ("train_curated", "train_noisy", "test")]}
    if test is not None:
        _, rows = _read_rows(test)
        if rows and "usage" in rows[0][1]:
            extra["usage"] = {r["fname"]: r["usage"] for _, r in rows}
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
    for ln, r in rows:
        try:
            t = int(r["target"])
        except ValueError:
            raise DataError(f"{meta}:{ln}: target {r['target']!r} is not an integer") from None
        if by_target.setdefault(t, r["category"]) != r["category"]:
            raise DataError(f"{meta}:{ln}: target {t} names two categories")
    ids = [r["filename"] for _, r in rows]
    _check_unique(meta, ids, [ln for ln, _ in rows])
    return Dataset(ids, [_abs(root / "audio" / i) for i in ids], [[r["category"]] for _, r in rows],
                   [by_target[t] for t in sorted(by_target)], [None] * len(rows),
                   [_fold(r["fold"], f"{meta}:{ln}") for ln, r in rows], "esc50", str(root),
                   {"roots": [_abs(root)], "looked_in": [str(root / "audio")]})


def read_folder_per_class(root: str | os.PathLike, exclude: Iterable = (), *, _files=None) -> Dataset:
    """``ROOT/<label>/.../<clip>``: each top sub-folder is a label; clip ids are paths relative to ROOT."""
    root = Path(root)
    files = _files if _files is not None else walk_files(root, exclude, audio_only=True)
    files = [(rel, p) for rel, p in files if "/" in rel and is_audio(rel)]
    if not files:
        raise DataError(f"{root}: no audio files in per-class sub-folders")
    ids = [safe_text(rel) for rel, _ in files]
    labels = [[rel.split("/", 1)[0]] for rel in ids]
    vocab = _vocab_from(labels)
    return Dataset(ids, [p for _, p in files], labels, vocab, [None] * len(ids), [None] * len(ids),
                   "folder_per_class", str(root), {"roots": [_abs(root)], "looked_in": [str(root)]})


def read_audio_folder(root: str | os.PathLike, exclude: Iterable = (), *, _files=None) -> Dataset:
    """A plain folder of audio files (walked recursively), unlabelled; clip ids are paths relative to it."""
    root = Path(root)
    files = _files if _files is not None else walk_files(root, exclude, audio_only=True)
    files = [(rel, p) for rel, p in files if is_audio(rel)]
    if not files:
        raise DataError(f"{root}: not a dataset (no labels.csv, FSDKaggle2019 CSVs, meta/esc50.csv or class "
                        f"folders) and no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    ids = [safe_text(rel) for rel, _ in files]
    return Dataset(ids, [p for _, p in files], [None] * len(ids), [], [None] * len(ids), [None] * len(ids),
                   "audio_folder", str(root), {"roots": [_abs(root)], "looked_in": [str(root)]})


def _folder_layout(path: Path, exclude=()) -> tuple[str, list[tuple[str, str]] | None]:
    """The layout of a folder and, for the walked layouts, its files (walked once)."""
    if _first(path, _FSD_NAMES):
        return "fsdkaggle2019", None
    if (path / "meta" / "esc50.csv").is_file():
        return "esc50", None
    if (path / "labels.csv").is_file():
        return "folder", None
    files = walk_files(path, exclude)
    audio = [rel for rel, _ in files if is_audio(rel)]
    if audio and all("/" in rel for rel in audio):  # no loose audio file: the sub-folders are the classes
        return "folder_per_class", files
    return "audio_folder", files


def load_dataset(path: str | os.PathLike, vocabulary: list[str] | None = None, *, exclude: Iterable = ()) -> Dataset:
    """Read a dataset, detecting its layout (see the module docstring). A Dataset is returned as it is."""
    if isinstance(path, Dataset):
        return path
    path = Path(path)
    if path.is_file():
        return read_labels_csv(path, vocabulary=vocabulary)
    if not path.is_dir():
        raise DataError(f"{path}: no such file or directory")
    layout, files = _folder_layout(path, exclude)
    if layout == "fsdkaggle2019":
        return read_fsdkaggle2019(path)
    if layout == "esc50":
        return read_esc50(path)
    if layout == "folder":
        return read_folder(path, vocabulary)
    if layout == "folder_per_class":
        return read_folder_per_class(path, exclude, _files=files)
    return read_audio_folder(path, exclude, _files=files)


# ------------------------------------------------------------------------------------------------ checks
def check_inside_root(ds: Dataset, allow_outside_root: bool = False) -> None:
    """Refuse listed paths that lie outside the dataset's folder (``../../x.wav``, ``/etc/x.wav``). The folders
    are those the reader recorded (``extra["roots"]``); a Dataset built in code without them is not checked."""
    roots = ds.extra.get("roots")
    if allow_outside_root or not roots:
        return
    outside = [(c, p) for c, p in zip(ds.clip_ids, ds.paths)
               if not any(os.path.commonpath([r, p]) == r for r in roots if os.path.isabs(p))]
    if outside:
        ex = ", ".join(f"{safe_text(c)!r} -> {safe_text(p)}" for c, p in outside[:3])
        raise DataError(f"{ds.extra.get('table', ds.root)}: {len(outside)} listed file(s) lie outside the dataset "
                        f"folder {roots[0]} (e.g. {ex}); move them inside it, or pass --allow-outside-root "
                        "(allow_outside_root=True) if you trust this list")


def check_audio_present(ds: Dataset) -> None:
    """One error when most listed files do not exist (a wrong folder), before any work; a few missing files are
    left to fail one by one."""
    n = len(ds)
    if n == 0:
        return
    missing = [p for p in ds.paths if not os.path.exists(p)]
    if len(missing) >= MIN_MISSING_FOR_ERROR and len(missing) * 2 > n:
        looked = ds.extra.get("looked_in") or [os.path.dirname(missing[0])]
        raise DataError(f"{ds.extra.get('table', ds.root)}: {len(missing)} of {n} listed audio files do not exist "
                        f"(e.g. {safe_text(missing[0])}); looked for them in {', '.join(looked)}. Put the audio in "
                        "one of those folders, or give each file's location in a 'path' column")


def dataset_for_audio(path, *, labels=None, allow_outside_root: bool = False, require_audio: bool = True,
                      exclude: Iterable = ()) -> Dataset:
    """A dataset whose audio is about to be read (profile, finetune, benchmark): :func:`load_dataset` plus the
    inside-the-root check and (``require_audio``) the mostly-missing check. With ``labels`` (a label table or
    dataset), ``path`` is the folder its file names are relative to."""
    if isinstance(path, Dataset):
        ds = path
    elif labels is not None:
        ds = load_dataset(labels) if os.path.isdir(labels) else read_labels_csv(labels, audio_dir=path)
    else:
        ds = load_dataset(path, exclude=exclude)
    check_inside_root(ds, allow_outside_root)
    if require_audio:
        check_audio_present(ds)
    return ds


# ------------------------------------------------------------------------------------------------ sources
def _items(src) -> list:
    if isinstance(src, (str, os.PathLike, bytes, Dataset)):
        items = [src]
    else:
        items = list(src)
    if not items:
        raise DataError("no input given")
    return [os.fsdecode(i) if isinstance(i, bytes) else i for i in items]


def _resolve_one(item, exclude, allow_outside_root) -> tuple[str, list[ClipSource]]:
    """(the folder clip ids are relative to, the sources) of one input."""
    if isinstance(item, Dataset):
        check_inside_root(item, allow_outside_root)
        check_audio_present(item)
        base = item.root if os.path.isdir(item.root) else os.path.dirname(_abs(item.root))
        return _abs(base), item.sources()
    p = Path(item)
    if p.is_dir():
        layout, files = _folder_layout(p, exclude)
        if layout == "audio_folder":  # every file: non-audio ones are recorded as failures, not ignored
            return _abs(p), [ClipSource(safe_text(rel), path) for rel, path in files]
        if layout == "folder_per_class":
            ds = read_folder_per_class(p, _files=files)
            by_id = dict(zip(ds.clip_ids, ds.labels))
            return _abs(p), [ClipSource(safe_text(rel), path, by_id.get(safe_text(rel))) for rel, path in files]
        ds = load_dataset(p)
        check_inside_root(ds, allow_outside_root)
        check_audio_present(ds)
        return _abs(p), ds.sources()
    if p.is_file() and p.suffix.lower() == ".csv":
        ds = read_labels_csv(p)
        check_inside_root(ds, allow_outside_root)
        check_audio_present(ds)
        return _abs(p.parent), ds.sources()
    if p.exists() or os.path.lexists(p):
        return _abs(p.parent), [ClipSource(safe_text(p.name), _abs(p))]
    raise DataError(f"input not found: {safe_text(p)}")


def _posix_rel(base: str, common: str) -> str:
    rel = os.path.relpath(base, common)
    return "" if rel == "." else safe_text(rel).replace(os.sep, "/")


def resolve_sources(src, labels=None, *, exclude: Iterable[str | os.PathLike] = (), allow_outside_root: bool = False,
                    limit: int | None = None) -> list[ClipSource]:
    """The clips of ``src`` (a path, a :class:`Dataset`, or a list of them; see the module docstring), in order.

    ``labels``: a label table or dataset whose labels attach to (or replace those of) the clips it names, matched
    as :func:`match_clips` does. ``exclude``: folders never walked (the store being written). ``limit``: only the
    first ``limit`` clips (0 gives none; a negative limit is a ParamError)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
        raise ParamError(f"invalid limit={limit!r}: expected an integer >= 0 (the first N inputs), or none for all")
    items = _items(src)
    groups = [_resolve_one(i, list(exclude), allow_outside_root) for i in items]
    bases = {b for b, _ in groups}
    common = os.path.commonpath(list(bases)) if len(bases) > 1 else None
    by_id: dict[str, ClipSource] = {}
    clashes: dict[str, set[str]] = {}
    sources: list[ClipSource] = []
    for base, group in groups:
        prefix = _posix_rel(base, common) if common is not None else ""
        for s in group:
            if prefix:
                s.clip_id = f"{prefix}/{s.clip_id}"
            held = by_id.get(s.clip_id)
            if held is None:
                by_id[s.clip_id] = s
                sources.append(s)
            elif held.path != s.path:
                clashes.setdefault(s.clip_id, {held.path}).add(s.path)
    if clashes:
        ex = "; ".join(f"{c!r}: {', '.join(sorted(safe_text(p) for p in ps))}" for c, ps in list(clashes.items())[:5])
        raise DataError(f"{len(clashes)} clip id(s) name different files ({ex}{'; ...' if len(clashes) > 5 else ''});"
                        " rename them or give their folders (clip ids are paths relative to the inputs' common "
                        "folder)")
    if labels is not None:
        ds = load_dataset(labels)
        for s, i in zip(sources, match_clips([s.clip_id for s in sources], ds, source=labels)):
            if i is not None and ds.labels[i] is not None:
                s.labels = list(ds.labels[i])
    return sources if limit is None else sources[:int(limit)]


def audio_files(inputs, *, exclude: Iterable = (), allow_outside_root: bool = False) -> tuple[list[str], list[str]]:
    """``(clip_ids, paths)`` of the audio clips of ``inputs`` (anything :func:`resolve_sources` reads; files
    without an audio extension are skipped). Raises DataError when there is none."""
    sources = resolve_sources(inputs, exclude=exclude, allow_outside_root=allow_outside_root)
    keep = [s for s in sources if is_audio(s.path)]
    if not keep:
        names = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
        raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in {', '.join(map(str, names))}")
    return [s.clip_id for s in keep], [s.path for s in keep]


# ------------------------------------------------------------------------------------------------ matching
def _basename(clip_id: str) -> str:
    return clip_id.replace("\\", "/").rsplit("/", 1)[-1]


def match_clips(store_ids: Sequence[str], dataset, *, source=None) -> list[int | None]:
    """Index into ``dataset`` (a :class:`Dataset` or a list of clip ids) of each of ``store_ids``, or None.

    By clip id; else by file name when that name belongs to exactly one store clip and one dataset clip. A store
    clip whose file name is shared on either side (and that has no exact match) is an error listing examples:
    matching it would pick one of several files silently."""
    ids = list(dataset.clip_ids if isinstance(dataset, Dataset) else dataset)
    exact = {c: i for i, c in enumerate(ids)}
    ds_names: dict[str, list[int]] = {}
    for i, c in enumerate(ids):
        ds_names.setdefault(_basename(c), []).append(i)
    store_names: dict[str, int] = {}
    for c in store_ids:
        b = _basename(c)
        store_names[b] = store_names.get(b, 0) + 1
    out: list[int | None] = []
    ambiguous: list[str] = []
    for c in store_ids:
        i = exact.get(c)
        if i is None:
            b = _basename(c)
            cand = ds_names.get(b, [])
            if len(cand) == 1 and store_names[b] == 1:
                i = cand[0]
            elif cand and (len(cand) > 1 or store_names[b] > 1):
                ambiguous.append(c)
        out.append(i)
    if ambiguous:
        where = source if source is not None else (dataset.root if isinstance(dataset, Dataset) else "the labels")
        ex = ", ".join(repr(safe_text(c)) for c in ambiguous[:5])
        raise DataError(f"{len(ambiguous)} clip(s) match {safe_text(where)} only by a file name that names several "
                        f"files (e.g. {ex}); name the clips by their clip id (the path relative to the input folder)")
    return out



# ------------------------------------------------------------------------------------------------ split
def _test_count(test_size, n: int) -> int:
    bad = ParamError(f"invalid test_size={test_size!r}: expected a fraction in (0, 1) or a clip count in "
                     f"[1, {n - 1}] (the dataset has {n} labelled clips)")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer, np.floating)):
        raise bad
    if isinstance(test_size, (int, np.integer)):
        count = int(test_size)
    else:
        t = float(test_size)
        count = int(np.ceil(t * n)) if 0 < t < 1 else -1  # NaN and inf fail the comparison too
    if not 1 <= count <= n - 1:
        raise bad
    return count


def split_dataset(data, test_size: float | int = 0.3, *, seed: int = 0, out: str | os.PathLike | None = None,
                  overwrite: bool = False) -> tuple[Dataset, Dataset]:
    """A reproducible train/test split of the labelled clips of ``data`` (any input :func:`load_dataset` reads),
    stratified by label and multi-label aware (iterative stratification: each label keeps about its share on both
    sides). ``test_size``: a fraction in (0, 1) (a float) or a clip count (an int). Unlabelled clips are left
    out of both sides.

    With ``out``, writes ``OUT/train.csv`` and ``OUT/test.csv`` (``fname`` = the dataset's clip id, ``labels``,
    ``subset`` / ``fold`` when the dataset has them, ``path`` = the absolute audio path) and ``OUT/split.json``
    (what was split, how, and the dataset folder, so that ``extract OUT/train.csv`` may read the audio there).
    Existing files are replaced only with ``overwrite``. Returns ``(train, test)``."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ParamError(f"invalid seed={seed!r}: expected an integer >= 0")
    ds = load_dataset(data)
    labelled = ds.labelled()
    n = len(labelled)
    if n < 2:
        raise DataError(f"{ds.root}: {n} labelled clip(s); a split needs at least 2")
    n_test = _test_count(test_size, n)
    Y = labelled.multi_hot()
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_test, random_state=int(seed))
    train_idx, test_idx = next(splitter.split(np.zeros((n, 1)), Y))
    train, test = labelled.select(np.sort(train_idx)), labelled.select(np.sort(test_idx))
    if out is not None:
        _write_split(Path(out), ds, train, test, test_size, int(seed), overwrite)
    return train, test


def _write_split(out: Path, ds: Dataset, train: Dataset, test: Dataset, test_size, seed: int,
                 overwrite: bool) -> None:
    import io

    from embedtag.artifacts import atomic_write_bytes, atomic_write_json, now_utc

    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder for train.csv and test.csv")
    targets = [out / "train.csv", out / "test.csv", out / "split.json"]
    held = [t.name for t in targets if t.exists()]
    if held and not overwrite:
        raise DataError(f"{out} already holds {', '.join(held)}; pass --overwrite (overwrite=True) to replace them")
    cols = ["fname", "labels"]
    if any(s is not None for s in ds.subsets):
        cols.append("subset")
    if any(f is not None for f in ds.folds):
        cols.append("fold")
    cols.append("path")
    for part, path in ((train, targets[0]), (test, targets[1])):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for i in range(len(part)):
            row = {"fname": safe_text(part.clip_ids[i]), "labels": ",".join(part.labels[i] or ()),
                   "subset": part.subsets[i] or "", "fold": "" if part.folds[i] is None else part.folds[i],
                   "path": safe_text(part.paths[i])}
            w.writerow([row[c] for c in cols])
        atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    roots = ds.extra.get("roots") or [_abs(ds.root if os.path.isdir(ds.root) else os.path.dirname(ds.root))]
    atomic_write_json(targets[2], {
        "kind": "dataset-split", "dataset": str(ds.root), "layout": ds.layout, "dataset_roots": list(roots),
        "test_size": test_size if isinstance(test_size, (int, float)) else float(test_size), "seed": seed,
        "n_train": len(train), "n_test": len(test), "n_unlabelled_left_out": len(ds) - len(train) - len(test),
        "vocabulary": list(ds.vocabulary), "created_at": now_utc()})
