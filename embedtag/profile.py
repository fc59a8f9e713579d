"""Dataset profile: the exploratory look at a labelled audio dataset before any training.

``profile_dataset(path)`` reads the dataset in any layout :func:`embedtag.inputs.load_dataset` knows (or a plain
folder of audio files, unlabelled) and returns a :class:`DatasetProfile`: clip count, durations (with a histogram),
sample rates, channels, labels per clip, label frequencies per subset (curated / noisy / test when the dataset has
subsets) and the clips flagged by name as **missing**, **unreadable**, **silent**, **clipped** or **too short**.

Headers are read with soundfile (no decoding). Only the level checks (silence, clipping) decode samples, block by
block at the file's own rate (no resampling), so memory stays bounded whatever the clip length; ``levels=False``
skips them for a header-only profile.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from embedtag.errors import DataError, EmbedtagError

__all__ = ["ClipFlag", "DatasetProfile", "profile_dataset", "clip_levels", "load_any", "FLAG_KINDS"]

#: what a clip can be flagged for
FLAG_KINDS = ("missing", "unreadable", "silent", "clipped", "too_short")

#: a clip whose RMS level is below this is "silent" (digital silence is -inf dBFS; room tone is about -60)
DEFAULT_SILENCE_DBFS = -60.0
#: a sample at or above this absolute value counts as clipped (16-bit full scale is 32767/32768 = 0.99997)
DEFAULT_CLIP_LEVEL = 0.999
#: a clip is "clipped" when at least this share of its samples sit at full scale; one peak-normalised sample at
#: 1.0 is not clipping, a flat-topped waveform is
DEFAULT_CLIPPED_FRACTION = 0.001
#: clips shorter than this are "too short" (FSDKaggle2019's shortest clips are 0.3 s)
DEFAULT_MIN_DURATION_S = 0.25
#: soundfile block size for the level checks (frames)
_BLOCK_FRAMES = 65536


@dataclass
class ClipFlag:
    """One flagged clip: its id, path, what is wrong (one of :data:`FLAG_KINDS`) and the measured value."""

    clip_id: str
    path: str
    kind: str
    detail: str


@dataclass
class DatasetProfile:
    """What :func:`profile_dataset` found. Durations are seconds; levels are dBFS."""

    root: str
    layout: str
    n_clips: int
    n_readable: int
    n_labelled: int
    n_labels: int
    multi_label: bool
    total_duration_s: float
    duration_s_stats: dict  # min, p5, median, mean, p95, max
    duration_histogram: dict  # {"edges_s": [...], "counts": [...]}
    sample_rates: dict[int, int]  # sample rate (Hz) -> clips
    channels: dict[int, int]  # channel count -> clips
    formats: dict[str, int]  # "WAV/PCM_16" -> clips
    labels_per_clip: dict[int, int]  # number of labels -> clips
    subsets: dict[str, int]  # subset -> clips ("all" when the dataset has none)
    label_counts: dict[str, dict[str, int]]  # subset -> {label: clips}, in vocabulary order
    flags: list[ClipFlag] = field(default_factory=list)
    levels_checked: bool = True
    thresholds: dict = field(default_factory=dict)
    durations_s: list[float] = field(default_factory=list, repr=False)  # per readable clip, for plots

    def flagged(self, kind: str) -> list[str]:
        """Clip ids flagged as ``kind`` (one of :data:`FLAG_KINDS`)."""
        if kind not in FLAG_KINDS:
            raise DataError(f"unknown flag kind {kind!r}; expected one of {', '.join(FLAG_KINDS)}")
        return [f.clip_id for f in self.flags if f.kind == kind]

    def flag_counts(self) -> dict[str, int]:
        c = Counter(f.kind for f in self.flags)
        return {k: c.get(k, 0) for k in FLAG_KINDS}

    def as_dict(self, durations: bool = False) -> dict:
        """JSON-ready dict (dict keys become strings); ``durations`` adds the per-clip durations."""
        d = asdict(self)
        for k in ("sample_rates", "channels", "labels_per_clip"):
            d[k] = {str(a): b for a, b in d[k].items()}
        d["flag_counts"] = self.flag_counts()
        if not durations:
            d.pop("durations_s")
        return d


def clip_levels(path: str | os.PathLike, clip_level: float = DEFAULT_CLIP_LEVEL) -> tuple[float, float, float]:
    """``(peak, rms_dbfs, clipped_fraction)`` of an audio file over all its channels, decoded block by block.

    Raises :class:`~embedtag.errors.AudioError` naming the file when it cannot be decoded."""
    import soundfile as sf

    from embedtag.embeddings.audio import LevelMeter
    from embedtag.errors import AudioError

    meter, n_clipped = LevelMeter(), 0
    try:
        for block in sf.blocks(str(path), blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
            meter.update(block)
            n_clipped += int((np.abs(block) >= clip_level).sum())
    except Exception as exc:
        raise AudioError(path, f"cannot decode (corrupt or truncated audio): {str(exc).strip()[:200]}") from None
    if meter.n == 0:
        raise AudioError(path, "contains no audio samples")
    if not math.isfinite(meter.sum_sq):
        raise AudioError(path, "contains NaN or infinite samples")
    return meter.peak, meter.rms_dbfs, n_clipped / meter.n


def load_any(path):
    """A :class:`~embedtag.inputs.Dataset` from any input :func:`embedtag.inputs.load_dataset` reads (a dataset
    folder, a label table finding its audio as ``extract`` does, a plain folder of audio files as an unlabelled
    dataset); listed files must lie inside the dataset folder."""
    from embedtag.inputs import dataset_for_audio

    return dataset_for_audio(path, require_audio=False)


def _histogram(durations: list[float], bins: int) -> dict:
    if not durations:
        return {"edges_s": [], "counts": []}
    hi = max(durations)
    lo = 0.0
    counts, edges = np.histogram(durations, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
    return {"edges_s": [round(float(e), 4) for e in edges], "counts": counts.astype(int).tolist()}


def profile_dataset(path, *, levels: bool = True, silence_dbfs: float = DEFAULT_SILENCE_DBFS,
                    clip_level: float = DEFAULT_CLIP_LEVEL, clipped_fraction: float = DEFAULT_CLIPPED_FRACTION,
                    min_duration_s: float = DEFAULT_MIN_DURATION_S, bins: int = 20, workers: int = 2,
                    progress: bool = False) -> DatasetProfile:
    """Profile the dataset at ``path`` (any layout :func:`~embedtag.inputs.load_dataset` reads, a plain folder of
    audio files, or a :class:`~embedtag.inputs.Dataset`).

    ``levels``: also decode each clip for the silence (RMS < ``silence_dbfs``) and clipping (at least
    ``clipped_fraction`` of samples at or above ``clip_level``) checks; False reads headers only.
    ``min_duration_s``: clips shorter than this are flagged ``too_short``. ``workers``: threads decoding.
    """
    from embedtag.embeddings.audio import audio_info

    if not (isinstance(bins, int) and bins >= 1):
        raise DataError(f"invalid bins={bins!r}: expected an integer >= 1")
    if not (0 < clip_level <= 1):
        raise DataError(f"invalid clip_level={clip_level!r}: expected a value in (0, 1]")
    if not (0 < clipped_fraction <= 1):
        raise DataError(f"invalid clipped_fraction={clipped_fraction!r}: expected a value in (0, 1]")
    if min_duration_s < 0:
        raise DataError(f"invalid min_duration_s={min_duration_s!r}: expected >= 0")
    if not (isinstance(workers, int) and workers >= 1):
        raise DataError(f"invalid workers={workers!r}: expected an integer >= 1")
    ds = load_any(path)
    n = len(ds)
    flags: list[ClipFlag] = []

    def header(i: int):
        p = ds.paths[i]
        if not os.path.exists(p):
            return i, None, "missing", "file not found"
        try:
            return i, audio_info(p), None, ""
        except EmbedtagError as exc:
            return i, None, "unreadable", getattr(exc, "reason", None) or str(exc)

    def level(i: int):
        try:
            return i, clip_levels(ds.paths[i], clip_level), None
        except EmbedtagError as exc:
            return i, None, getattr(exc, "reason", None) or str(exc)

    bar = _Progress(progress, n * (2 if levels else 1), f"profiling {Path(ds.root).name or ds.root}")
    with bar, ThreadPoolExecutor(max_workers=workers) as pool:
        infos = {}
        for i, info, kind, detail in pool.map(header, range(n)):
            bar.advance()
            if info is None:
                flags.append(ClipFlag(ds.clip_ids[i], ds.paths[i], kind, detail))
            else:
                infos[i] = info
        if levels:
            for i, lv, err in pool.map(level, sorted(infos)):
                bar.advance()
                if lv is None:
                    flags.append(ClipFlag(ds.clip_ids[i], ds.paths[i], "unreadable", err))
                    infos.pop(i)
                    continue
                peak, rms_dbfs, frac = lv
                if rms_dbfs < silence_dbfs:
                    flags.append(ClipFlag(ds.clip_ids[i], ds.paths[i], "silent",
                                          f"RMS {rms_dbfs:.1f} dBFS < {silence_dbfs:g} dBFS (peak {peak:.4f})"))
                if frac >= clipped_fraction:
                    flags.append(ClipFlag(ds.clip_ids[i], ds.paths[i], "clipped",
                                          f"{100 * frac:.2f}% of samples at |x| >= {clip_level:g}"))
    for i, info in infos.items():
        if info.duration_s < min_duration_s:
            flags.append(ClipFlag(ds.clip_ids[i], ds.paths[i], "too_short",
                                  f"{info.duration_s:.3f} s < {min_duration_s:g} s"))
    order = {k: j for j, k in enumerate(FLAG_KINDS)}
    flags.sort(key=lambda f: (order[f.kind], f.clip_id))

    readable = sorted(infos)
    durations = [infos[i].duration_s for i in readable]
    stats = {}
    if durations:
        d = np.asarray(durations)
        stats = {"min": float(d.min()), "p5": float(np.percentile(d, 5)), "median": float(np.median(d)),
                 "mean": float(d.mean()), "p95": float(np.percentile(d, 95)), "max": float(d.max())}
    subsets_present = [s for s in ("curated", "noisy", "test") if s in ds.subsets]
    subset_names = [s if s is not None else "all" for s in ds.subsets]
    label_counts: dict[str, dict[str, int]] = {}
    for name in (subsets_present + (["all"] if None in ds.subsets else [])):
        c = Counter(lab for lab, s in zip(ds.labels, subset_names) if s == name for lab in (lab or ()))
        if c or name != "test":
            label_counts[name] = {v: c.get(v, 0) for v in ds.vocabulary}
    return DatasetProfile(
        root=str(ds.root), layout=ds.layout, n_clips=n, n_readable=len(readable),
        n_labelled=sum(1 for lab in ds.labels if lab), n_labels=len(ds.vocabulary), multi_label=ds.is_multi_label,
        total_duration_s=float(sum(durations)), duration_s_stats=stats, duration_histogram=_histogram(durations, bins),
        sample_rates=dict(sorted(Counter(infos[i].sample_rate for i in readable).items())),
        channels=dict(sorted(Counter(infos[i].channels for i in readable).items())),
        formats=dict(Counter(f"{infos[i].format}/{infos[i].subtype}" for i in readable).most_common()),
        labels_per_clip=dict(sorted(Counter(len(lab or ()) for lab in ds.labels).items())),
        subsets=dict(Counter(subset_names)), label_counts=label_counts, flags=flags, levels_checked=levels,
        thresholds={"silence_dbfs": silence_dbfs, "clip_level": clip_level, "clipped_fraction": clipped_fraction,
                    "min_duration_s": min_duration_s},
        durations_s=[round(x, 4) for x in durations])


class _Progress:
    """A rich progress bar when enabled, else nothing."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label
        self._bar = self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import Progress

            self._bar = Progress(transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
        return False
