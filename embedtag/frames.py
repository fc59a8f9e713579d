"""Tagging over time: scores window by window, and whole-clip tags, from a head, a fine-tuned run or a backbone.

::

    from embedtag.frames import predict_frames, tag_clip
    from embedtag.artifacts import load_predictor

    head = load_predictor("heads/office")
    frames = predict_frames(head, "long.wav", window_s=1.0)   # clip_id, start_s, end_s, one column per label
    tag_clip(head, "long.wav", k=3)                           # {"duration_s", "tags": [...], "labels": [...]}
    tag_clip("efficientat-mn04", "speech.wav")                # no head: the backbone's own AudioSet classes

What scores a window depends on what is given (see :func:`make_scorer`):

- a **head** (``embedtag fit-head``): each window is embedded with the backbone, weights and pooling the head's
  store recorded (``head.backbone``, ``head.extraction``), so a head trained on clip embeddings applies to windows
  (for ``meanmax`` pooling a single window's mean and max are both its embedding). The whole-clip score pools the
  windows exactly as ``embedtag extract`` pools them (duration-weighted mean, max, or both), so ``tag_clip`` gives
  the head's ``predict_files`` answer.
- a **fine-tuned run** (``embedtag finetune``): the network scores each window directly
  (``FinetunedModel.predict_proba_waves``); the whole-clip score is the duration-weighted mean of the windows'.
- a **backbone** (a :class:`~embedtag.embeddings.backbones.base.Backbone` or a backbone name): its own AudioSet
  class scores (``backbone.class_names``), pooled over windows as ``extract`` pools them.

Windows: ``window_s`` defaults to the window of the head's store (``extract``'s 10 s for a backbone, the training
crop for a run); ``hop_s`` defaults to ``window_s`` (no overlap). The last window may be shorter (``end_s`` says
where it ends); windows shorter than the backbone's minimum are zero-padded, as in ``extract``. Files are decoded
block by block (:func:`embedtag.embeddings.audio.iter_windows`), so memory is bounded by the window and the
batch, not by the file's length.

The :class:`FrameScorer` splits the work in two so that a server can batch many clips into one model call:
:meth:`FrameScorer.run_windows` (the heavy part, any windows of any clips) and :meth:`FrameScorer.score_clip`
(pooling and the head, per clip).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedtag.embeddings import audio as A
from embedtag.errors import DataError, IncompatibleError, ParamError

#: Score at or above which a label is "present" when the predictor has no thresholds of its own (multi-label
#: heads, runs and AudioSet scores are independent sigmoids; 0.5 is their natural decision point). Heads that
#: store per-class thresholds (``head.thresholds_``, from out-of-fold predictions) use those instead. A
#: single-label predictor (softmax) always answers its top label.
DEFAULT_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------------------- windows
def iter_frames(source, sample_rate: int, window_s: float, hop_s: float | None = None, *,
                source_sample_rate: int | None = None,
                max_duration_s: float | None = A.DEFAULT_MAX_DURATION_S) -> Iterator[tuple[int, np.ndarray]]:
    """``(start_sample, window)`` of ``source`` (a file path, or mono samples at ``source_sample_rate``) at
    ``sample_rate``: windows of ``window_s`` seconds every ``hop_s`` seconds (default: ``window_s``).

    The last window is shorter when the audio does not fill it; a window whose span is already covered by the
    previous one is not emitted. A file is streamed (:func:`~embedtag.embeddings.audio.iter_windows`), so memory
    holds one window plus one hop, whatever the file's length. Raises AudioError naming the file."""
    window = max(1, round(window_s * sample_rate))
    hop = window if hop_s is None else max(1, round(hop_s * sample_rate))
    if hop > window:
        raise ParamError(f"hop_s={hop_s} is longer than window_s={window_s}: windows would leave gaps")
    if isinstance(source, np.ndarray):
        x = A.resample(A.to_mono(np.asarray(source, np.float32)), source_sample_rate or sample_rate, sample_rate)
        if x.size == 0:
            raise DataError("the audio array is empty")
        chunks: Iterator[np.ndarray] = iter([x])
    else:
        # as extract does: a short file is decoded (and resampled) whole, a long one streamed block by block
        from embedtag.embeddings.pipeline import STREAM_THRESHOLD_WINDOWS

        x, _ = A.read_audio(source, sample_rate, max_duration_s=max_duration_s,
                            whole_up_to_s=STREAM_THRESHOLD_WINDOWS * max(window_s, 1.0))
        chunks = iter([x]) if x is not None else A.iter_windows(source, sample_rate, hop / sample_rate,
                                                                max_duration_s=max_duration_s)
    buf = np.zeros(0, np.float32)
    buf_start = 0  # sample offset of buf[0]
    next_start = 0
    last_end = 0
    for chunk in chunks:
        buf = np.concatenate([buf, chunk]) if buf.size else np.asarray(chunk, np.float32)
        while buf_start + buf.size >= next_start + window:
            off = next_start - buf_start
            yield next_start, buf[off:off + window]
            last_end = next_start + window
            next_start += hop
            drop = next_start - buf_start
            buf, buf_start = buf[drop:], next_start
    total = buf_start + buf.size
    if next_start < total and (last_end < total or next_start == 0):
        yield next_start, buf[next_start - buf_start:]


# ----------------------------------------------------------------------------------------------- scoring
@dataclass
class WindowOutput:
    """What the model said about a list of windows: embeddings (backbone; None for a fine-tuned run) and
    scores (AudioSet class scores of the backbone, or the run's label probabilities), one row per window."""

    embeddings: np.ndarray | None
    scores: np.ndarray | None

    def __len__(self) -> int:
        return len(self.embeddings if self.embeddings is not None else self.scores)

    def take(self, rows: slice) -> WindowOutput:
        return WindowOutput(None if self.embeddings is None else self.embeddings[rows],
                            None if self.scores is None else self.scores[rows])


@dataclass
class ClipScores:
    """One clip scored by :meth:`FrameScorer.score_clip`."""

    #: (n_windows, n_labels) scores of each window
    frame_scores: np.ndarray
    #: (n_labels,) scores of the whole clip
    clip_scores: np.ndarray
    #: the clip embedding exactly as ``extract`` stores it (None for a fine-tuned run)
    clip_embedding: np.ndarray | None


def pool_embeddings(emb: np.ndarray, durations_s: Sequence[float], pooling: str) -> np.ndarray:
    """Window embeddings -> the clip embedding, computed as ``embedtag extract`` computes it (the running
    duration-weighted sum in float32, then divided by the total duration; max; or both concatenated)."""
    total = None
    for e, w in zip(emb, durations_s):
        total = e * w if total is None else total + e * w
    mean = (total / float(sum(durations_s))).astype(np.float32)
    if pooling == "mean":
        return mean
    mx = emb.max(axis=0).astype(np.float32)
    return mx if pooling == "max" else np.concatenate([mean, mx])


def _window_vectors(emb: np.ndarray, pooling: str) -> np.ndarray:
    """A single window pooled as the store pools clips: its embedding (mean, max) or itself twice (meanmax)."""
    return np.concatenate([emb, emb], axis=1) if pooling == "meanmax" else emb


class FrameScorer:
    """A predictor made ready to score windows; make one with :func:`make_scorer`.

    Attributes: ``kind`` ("head", "run" or "backbone"), ``labels`` (score columns, in order), ``multi_label``,
    ``sample_rate`` (of the windows it takes), ``window_s`` and ``pooling`` (those of the head's store),
    ``backbone`` (None for a run), ``predictor`` (the head or run, None for a backbone), ``thresholds``
    ((n_labels,) decision thresholds)."""

    def __init__(self, kind: str, *, labels: Sequence[str], multi_label: bool, sample_rate: int, window_s: float,
                 pooling: str = "mean", backbone=None, predictor=None, thresholds=None):
        self.kind, self.labels, self.multi_label = kind, list(labels), bool(multi_label)
        self.sample_rate, self.window_s, self.pooling = int(sample_rate), float(window_s), pooling
        self.backbone, self.predictor = backbone, predictor
        self.thresholds = _thresholds(thresholds, self.labels)
        self.min_samples = int(getattr(backbone, "min_samples", 1) or 1)

    def __repr__(self) -> str:
        return (f"FrameScorer(kind={self.kind!r}, labels={len(self.labels)}, window_s={self.window_s}, "
                f"pooling={self.pooling!r}, sample_rate={self.sample_rate})")

    @property
    def backbone_name(self) -> str | None:
        if self.backbone is not None:
            return self.backbone.name
        return getattr(self.predictor, "backbone_name", None)

    def run_windows(self, windows: Sequence[np.ndarray]) -> WindowOutput:
        """The model call for any number of windows (of any clips): row ``i`` depends on ``windows[i]`` alone."""
        if not len(windows):
            return WindowOutput(None, np.zeros((0, len(self.labels)), np.float32))
        if self.kind == "run":
            return WindowOutput(None, np.asarray(self.predictor.predict_proba_waves(list(windows)), np.float32))
        out = self.backbone.embed([A.pad_to(np.asarray(w, np.float32), self.min_samples) for w in windows])
        return WindowOutput(np.asarray(out.embeddings, np.float32),
                            None if out.scores is None else np.asarray(out.scores, np.float32))

    def window_scores(self, out: WindowOutput) -> np.ndarray:
        """(n_windows, n_labels) scores of each window alone."""
        if self.kind == "head":
            return np.asarray(self.predictor.predict_proba(_window_vectors(out.embeddings, self.pooling)), np.float32)
        if out.scores is None:
            raise IncompatibleError(f"backbone {self.backbone_name} gives no class scores; tag with a head")
        return out.scores

    def score_clip(self, out: WindowOutput, durations_s: Sequence[float]) -> ClipScores:
        """Window scores and whole-clip scores of ONE clip from its windows' model output (``durations_s``: each
        window's length in seconds, which weights the mean as in ``extract``)."""
        frames = self.window_scores(out)
        emb = None if out.embeddings is None else pool_embeddings(out.embeddings, durations_s, self.pooling)
        if self.kind == "head":
            clip = np.asarray(self.predictor.predict_proba(emb[None, :]), np.float32)[0]
        elif self.kind == "backbone" and self.pooling != "mean":
            clip = frames.max(axis=0)
        else:
            w = np.asarray(durations_s, np.float64)
            clip = ((frames * w[:, None]).sum(0) / w.sum()).astype(np.float32)
        return ClipScores(frames, clip, emb)

    def present(self, scores: np.ndarray) -> list[str]:
        """The labels a clip is tagged with: scores at or above their threshold (the top label alone for a
        single-label predictor, which always answers one), most probable first."""
        scores = np.asarray(scores)
        order = np.argsort(-scores, kind="stable")
        if not self.multi_label:
            return [self.labels[order[0]]] if len(order) else []
        return [self.labels[j] for j in order if scores[j] >= self.thresholds[j]]

    def top(self, scores: np.ndarray, k: int) -> list[dict]:
        """``[{"label", "score"}]`` of the ``k`` best scores, best first."""
        if k < 1:
            raise ParamError(f"invalid top-k {k}: expected >= 1")
        order = np.argsort(-np.asarray(scores), kind="stable")[:k]
        return [{"label": self.labels[j], "score": float(scores[j])} for j in order]


def _thresholds(thresholds, labels: list[str]) -> np.ndarray:
    """Per-label thresholds from a head's ``thresholds_`` (a sequence in vocabulary order or a label -> value
    mapping; labels it misses get the default), else :data:`DEFAULT_THRESHOLD` everywhere."""
    out = np.full(len(labels), DEFAULT_THRESHOLD, np.float64)
    if thresholds is None:
        return out
    if isinstance(thresholds, dict):
        for j, lab in enumerate(labels):
            if lab in thresholds and thresholds[lab] is not None:
                out[j] = float(thresholds[lab])
        return out
    t = np.asarray(thresholds, np.float64).ravel()
    if t.size == 1:
        return np.full(len(labels), float(t[0]))
    if t.size != len(labels):
        raise IncompatibleError(f"the predictor has {t.size} thresholds for {len(labels)} labels")
    return t


def make_scorer(predictor_or_backbone, *, backbone=None, device: str = "auto") -> FrameScorer:
    """Resolve what scores windows: a loaded head or fine-tuned run (:func:`embedtag.artifacts.load_predictor`),
    a head or run directory, a loaded backbone, a backbone name, or a :class:`FrameScorer` (returned as is).

    A head needs its backbone: pass a loaded one as ``backbone`` to share it (it must be the head's), otherwise
    the head's is loaded. Raises IncompatibleError when the backbone or its weights are not the head's."""
    from embedtag.embeddings.backbones.base import Backbone
    from embedtag.embeddings.pipeline import DEFAULT_WINDOW_S
    from embedtag.embeddings.registry import load_backbone

    p = predictor_or_backbone
    if isinstance(p, FrameScorer):
        return p
    if isinstance(p, (str, os.PathLike)):
        if Path(p).is_dir():
            from embedtag.artifacts import load_predictor

            p = load_predictor(p, device=device)
        else:
            p = load_backbone(str(p), device=device)
    if isinstance(p, Backbone):
        return FrameScorer("backbone", labels=p.class_names, multi_label=True, sample_rate=p.sample_rate,
                           window_s=DEFAULT_WINDOW_S, pooling="mean", backbone=p)
    if hasattr(p, "predict_proba_waves"):  # a fine-tuned run
        return FrameScorer("run", labels=p.vocabulary, multi_label=getattr(p, "multi_label", True),
                           sample_rate=p.sample_rate, window_s=p.crop_samples / p.sample_rate, predictor=p,
                           thresholds=getattr(p, "thresholds_", None))
    if not hasattr(p, "predict_proba") or not hasattr(p, "vocabulary"):
        raise ParamError(f"cannot score windows with {type(p).__name__}: give a head, a fine-tuned run, a backbone "
                         "or a backbone name")
    name = getattr(p, "backbone", None)
    if not name:
        raise DataError("this head records no backbone, so audio cannot be embedded for it")
    ext = getattr(p, "extraction", None) or {}
    if backbone is None:
        backbone = load_backbone(name, device=device)
    elif backbone.name != name:
        raise IncompatibleError(f"the head was trained on embeddings of {name!r}, not {backbone.name!r}")
    want = ext.get("weights_sha256")
    if want and backbone.weights_sha256 and backbone.weights_sha256 != want:
        raise IncompatibleError(f"the {name} weights found ({backbone.weights_path}) are not those the head's store "
                                f"was made with (sha256 {want[:12]}...)")
    return FrameScorer("head", labels=p.vocabulary, multi_label=p.multi_label,
                       sample_rate=int(ext.get("sample_rate") or backbone.sample_rate),
                       window_s=float(ext.get("window_s") or DEFAULT_WINDOW_S), pooling=ext.get("pooling", "mean"),
                       backbone=backbone, predictor=p, thresholds=getattr(p, "thresholds_", None))


# ----------------------------------------------------------------------------------------------- API
def _sources(source) -> list[tuple[str, object]]:
    if isinstance(source, np.ndarray):
        return [("0", source)]
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise DataError("no input given")
    out = []
    for i, item in enumerate(items):
        out.append((str(i), item) if isinstance(item, np.ndarray) else (Path(item).name, item))
    return out


def _scored_windows(scorer: FrameScorer, source, window_s: float, hop_s: float | None, sample_rate, batch_size: int,
                    max_duration_s) -> Iterator[tuple[list[tuple[int, int]], WindowOutput]]:
    """(start, length) of each window and the model's output, a batch at a time."""
    spans: list[tuple[int, int]] = []
    windows: list[np.ndarray] = []
    for start, w in iter_frames(source, scorer.sample_rate, window_s, hop_s, source_sample_rate=sample_rate,
                                max_duration_s=max_duration_s):
        spans.append((start, w.size))
        windows.append(w)
        if len(windows) >= batch_size:
            yield spans, scorer.run_windows(windows)
            spans, windows = [], []
    if windows:
        yield spans, scorer.run_windows(windows)


def predict_frames(predictor_or_backbone, source, *, window_s: float | None = None, hop_s: float | None = None,
                   sample_rate: int | None = None, batch_size: int = 32, backbone=None, device: str = "auto",
                   max_duration_s: float | None = A.DEFAULT_MAX_DURATION_S):
    """Scores window by window: a DataFrame ``clip_id, start_s, end_s, <one column per label>``.

    ``predictor_or_backbone``: see :func:`make_scorer`. ``source``: an audio file, a list of files (``clip_id`` is
    the file name), or a mono array at ``sample_rate`` (``clip_id`` "0"). ``window_s`` / ``hop_s``: see the
    module docstring. Files are streamed, so hour-long recordings fit in memory; the frame has one row per window.
    Raises AudioError naming a file that cannot be decoded."""
    import pandas as pd

    scorer = make_scorer(predictor_or_backbone, backbone=backbone, device=device)
    window_s = float(window_s or scorer.window_s)
    if window_s <= 0 or (hop_s is not None and hop_s <= 0):
        raise ParamError(f"window_s and hop_s must be positive, got {window_s} and {hop_s}")
    sr = scorer.sample_rate
    ids, starts, ends, scores = [], [], [], []
    for clip_id, src in _sources(source):
        for spans, out in _scored_windows(scorer, src, window_s, hop_s, sample_rate, batch_size, max_duration_s):
            scores.append(scorer.window_scores(out))
            for start, n in spans:
                ids.append(clip_id)
                starts.append(start / sr)
                ends.append((start + n) / sr)
    S = np.concatenate(scores) if scores else np.zeros((0, len(scorer.labels)), np.float32)
    df = pd.DataFrame(S, columns=scorer.labels)
    df.insert(0, "end_s", np.round(ends, 6))
    df.insert(0, "start_s", np.round(starts, 6))
    df.insert(0, "clip_id", ids)
    return df


def tag_clip(predictor_or_backbone, source, *, k: int = 5, sample_rate: int | None = None, batch_size: int = 32,
             backbone=None, device: str = "auto", max_duration_s: float | None = A.DEFAULT_MAX_DURATION_S) -> dict:
    """Whole-clip tags of one file (or mono array at ``sample_rate``):
    ``{"duration_s", "tags": [{"label", "score"}] (top k), "labels": [labels at or above their threshold]}``.

    The clip is windowed and pooled exactly as ``embedtag extract`` does for the head's store, so a head gives the
    scores ``predict_files`` gives."""
    scorer = make_scorer(predictor_or_backbone, backbone=backbone, device=device)
    sources = _sources(source)
    if len(sources) != 1:
        raise ParamError(f"tag_clip tags one clip, got {len(sources)}; use predict_frames for several")
    src = sources[0][1]
    spans: list[tuple[int, int]] = []
    outs: list[WindowOutput] = []
    for sp, out in _scored_windows(scorer, src, scorer.window_s, None, sample_rate, batch_size, max_duration_s):
        spans += sp
        outs.append(out)
    out = WindowOutput(None if outs[0].embeddings is None else np.concatenate([o.embeddings for o in outs]),
                       None if outs[0].scores is None else np.concatenate([o.scores for o in outs]))
    durations = [n / scorer.sample_rate for _, n in spans]
    clip = scorer.score_clip(out, durations).clip_scores
    return {"duration_s": float(sum(durations)), "tags": scorer.top(clip, k), "labels": scorer.present(clip)}


# ----------------------------------------------------------------------------------------------- events, plots
def _label_columns(frame) -> list[str]:
    return [c for c in frame.columns if c not in ("clip_id", "start_s", "end_s", "labels")]


def _median_filter(active: np.ndarray, size: int) -> np.ndarray:
    """Median filter of 0/1 columns over time (rows); edges repeat the nearest value (scipy's "nearest")."""
    if size <= 1 or len(active) == 0:
        return active
    from scipy.ndimage import median_filter

    return median_filter(active.astype(np.uint8), size=(size, 1), mode="nearest").astype(bool)


def frames_to_events(frame, thresholds=None, median_filter: int = 3, multi_label: bool = True):
    """Merge the windows of a :func:`predict_frames` frame into events: a DataFrame
    ``clip_id, label, onset_s, offset_s, score`` (score: the label's mean score over the event's windows).

    A label is active in a window when its score reaches its threshold (``thresholds``: a head's ``thresholds_``,
    a sequence in column order, a label -> value dict, a float, or None for :data:`DEFAULT_THRESHOLD`); for a
    single-label predictor (``multi_label=False``) the window's top label is the active one. A median filter over
    ``median_filter`` windows (odd; 1: none) removes one-window blips and fills one-window gaps. An event runs
    from the start of its first window to the end of its last."""
    import pandas as pd

    if not isinstance(median_filter, int) or median_filter < 1 or median_filter % 2 == 0:
        raise ParamError(f"median_filter must be an odd integer >= 1, got {median_filter!r}")
    labels = _label_columns(frame)
    t = np.full(len(labels), float(thresholds)) if isinstance(thresholds, (int, float)) else \
        _thresholds(thresholds, labels)
    rows = []
    for clip_id, g in frame.groupby("clip_id", sort=False):
        g = g.sort_values("start_s", kind="stable")
        S = g[labels].to_numpy(np.float64)
        if multi_label:
            active = S >= t[None, :]
        else:
            active = np.zeros(S.shape, bool)
            active[np.arange(len(S)), np.argmax(S, 1)] = True
        active = _median_filter(active, median_filter)
        starts, ends = g["start_s"].to_numpy(), g["end_s"].to_numpy()
        for j, lab in enumerate(labels):
            a = np.r_[False, active[:, j], False].astype(np.int8)
            edges = np.flatnonzero(np.diff(a))
            for on, off in zip(edges[::2], edges[1::2]):  # windows on..off-1 are active
                rows.append({"clip_id": clip_id, "label": lab, "onset_s": float(starts[on]),
                             "offset_s": float(ends[off - 1]), "score": float(S[on:off, j].mean())})
    events = pd.DataFrame(rows, columns=["clip_id", "label", "onset_s", "offset_s", "score"])
    return events.sort_values(["clip_id", "onset_s", "label"], kind="stable").reset_index(drop=True)


def plot_timeline(frame, path: str | os.PathLike, *, max_clips: int = 8) -> Path:
    """Save a PNG timeline of a :func:`predict_frames` frame: per clip, a labels x time heat map of the window
    scores (at most ``max_clips`` clips, one panel each). Returns the file written."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    labels = _label_columns(frame)
    clips = list(dict.fromkeys(frame["clip_id"]))[:max_clips]
    if not clips:
        raise DataError("no window to plot")
    show = labels
    if len(labels) > 30:  # AudioSet's 521 classes: keep the ones that score highest somewhere
        peak = frame[labels].max().sort_values(ascending=False)
        show = list(peak.index[:30])
    fig, axes = plt.subplots(len(clips), 1, figsize=(10, 0.25 * len(show) * len(clips) + 1.2 * len(clips)),
                             squeeze=False)
    for ax, clip in zip(axes[:, 0], clips):
        g = frame[frame["clip_id"] == clip].sort_values("start_s")
        # each window drawn around its centre, as wide as the hop (windows overlap when hop < window)
        centres = ((g["start_s"] + g["end_s"]) / 2).to_numpy(np.float64)
        if len(centres) > 1:
            mids = (centres[1:] + centres[:-1]) / 2
            edges = np.r_[centres[0] - (mids[0] - centres[0]), mids, centres[-1] + (centres[-1] - mids[-1])]
        else:
            edges = np.array([float(g["start_s"].iloc[0]), float(g["end_s"].iloc[0])])
        edges = np.clip(edges, float(g["start_s"].min()), float(g["end_s"].max()))
        im = ax.pcolormesh(edges, np.arange(len(show) + 1) - 0.5, g[show].to_numpy().T, vmin=0, vmax=1,
                           cmap="viridis", shading="flat")
        ax.invert_yaxis()
        ax.set_yticks(range(len(show)))
        ax.set_yticklabels(show, fontsize=7)
        ax.set_title(str(clip), fontsize=9, loc="left")
        ax.set_xlabel("time (s)")
        fig.colorbar(im, ax=ax, pad=0.01, label="score")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
