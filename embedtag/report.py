"""Benchmark reports: ``report.md``, a self-contained ``report.html`` and PNG plots from one results dict.

:func:`write_report` takes the dict :func:`embedtag.benchmark.run_benchmark` produces (also saved as
``results.json`` beside the report, so a report can be re-rendered without re-running anything) and writes:

* PNG plots (matplotlib, Agg backend): duration histogram, lwlrap by head and noisy-label strategy, per-class lwlrap
  (best and worst classes), most-confused label pairs, the best head's per-class average precision, precision-recall
  curves, confusion matrix (single-label data) and score distributions, retrieval precision@k, throughput and
  memory. Every figure carries a footer with the machine, device, versions, weights checksum, seed and time.
* ``report.md`` referencing the PNGs, and ``report.html`` with the PNGs embedded as base64 data URIs and inline CSS:
  one file, no external resources, no scripts.

Published references sit beside the results (:data:`REFERENCES`, each with its source); the report says where a
result would rank among the references of its dataset. A section whose stage did not run says so and why.

:func:`write_evaluation_report` is the same kind of report for one predictor scored on labelled clips
(``embedtag evaluate --out``). Both draw their classification plots from :func:`classification_diagnostics`, a
JSON-able summary of ``(Y_true, scores, vocabulary, multi_label)`` (sklearn's average precision, PR curves and
confusion matrix), so a report re-renders from its JSON without the raw scores.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from embedtag.errors import DataError

__all__ = ["REFERENCES", "REFERENCE_WARNINGS", "REFERENCE_LABELS", "write_report", "write_evaluation_report",
           "classification_diagnostics", "plot_classification", "machine_info", "versions", "peak_rss_mib",
           "rank_among_references", "references_for", "not_run"]

#: Published results to put beside ours. ``dataset`` is the :class:`~embedtag.datasets.Dataset` layout they apply
#: to; ``metric`` is what ``value`` measures. Sources are papers / leaderboards a reader can check.
REFERENCES: list[dict] = [
    {"dataset": "fsdkaggle2019", "name": "DCASE 2019 Task 2 official baseline (public leaderboard)",
     "metric": "lwlrap", "value": 0.537, "split": "public test (Kaggle public LB)",
     "source": "Fonseca et al., Audio tagging with noisy labels and minimal supervision, DCASE 2019 Workshop",
     "url": "https://arxiv.org/abs/1906.02975"},
    {"dataset": "fsdkaggle2019", "name": "DCASE 2019 Task 2 official baseline (full test set)",
     "metric": "lwlrap", "value": 0.546, "split": "full test set (public + private)",
     "source": "Fonseca et al., Audio tagging with noisy labels and minimal supervision, DCASE 2019 Workshop",
     "url": "https://arxiv.org/abs/1906.02975"},
    {"dataset": "fsdkaggle2019", "name": "Freesound Audio Tagging 2019, top of the leaderboard (about)",
     "metric": "lwlrap", "value": 0.76, "split": "private test (Kaggle private LB)",
     "source": "Kaggle Freesound Audio Tagging 2019 private leaderboard",
     "url": "https://www.kaggle.com/c/freesound-audio-tagging-2019/leaderboard"},
    {"dataset": "esc50", "name": "HEAR 2021 best submission (frozen embeddings)", "metric": "accuracy",
     "value": 0.9665, "split": "5-fold CV on the official folds",
     "source": "Turian et al., HEAR: Holistic Evaluation of Audio Representations, PMLR 176 (2022)",
     "url": "https://hearbenchmark.com/hear-leaderboard.html"},
    {"dataset": "esc50", "name": "PANNs CNN14 (HEAR 2021, frozen embeddings)", "metric": "accuracy",
     "value": 0.9085, "split": "5-fold CV on the official folds",
     "source": "Turian et al., HEAR: Holistic Evaluation of Audio Representations, PMLR 176 (2022)",
     "url": "https://hearbenchmark.com/hear-leaderboard.html"},
    {"dataset": "esc50", "name": "YAMNet (HEAR 2021, frozen embeddings)", "metric": "accuracy", "value": 0.8375,
     "split": "5-fold CV on the official folds",
     "source": "Turian et al., HEAR: Holistic Evaluation of Audio Representations, PMLR 176 (2022)",
     "url": "https://hearbenchmark.com/hear-leaderboard.html"},
    {"dataset": "esc50", "name": "Human listeners", "metric": "accuracy", "value": 0.813,
     "split": "crowd-sourced listening test",
     "source": "Piczak, ESC: Dataset for Environmental Sound Classification, ACM Multimedia 2015",
     "url": "https://github.com/karolpiczak/ESC-50"},
    {"dataset": "esc50", "name": "OpenL3 (HEAR 2021, frozen embeddings)", "metric": "accuracy", "value": 0.7505,
     "split": "5-fold CV on the official folds",
     "source": "Turian et al., HEAR: Holistic Evaluation of Audio Representations, PMLR 176 (2022)",
     "url": "https://hearbenchmark.com/hear-leaderboard.html"},
]

#: Caveats printed with a dataset's references.
REFERENCE_WARNINGS: dict[str, str] = {
    "fsdkaggle2019": ("The Kaggle competition banned external data and pretrained models, so results from "
                      "AudioSet-pretrained backbones (as here) are not comparable on equal terms with the "
                      "leaderboard; the official baseline was also trained from scratch."),
    "esc50": ("HEAR 2021 numbers are 5-fold accuracy of a small classifier on frozen embeddings over the official "
              "ESC-50 folds, the protocol this benchmark follows when the dataset's folds are present."),
}

#: Label count of the datasets the references were measured on: a dataset in the same layout with another label
#: count (ESC-10, a subset, a user's own data) is ranked with a caution.
REFERENCE_LABELS: dict[str, int] = {"fsdkaggle2019": 80, "esc50": 50}

MIB = 1024 * 1024
#: how many classes the per-class plot shows at each end
PER_CLASS_SHOWN = 10
#: up to this many classes each get a precision-recall curve; above it: the micro-average and the best / worst few
PR_ALL_CLASSES = 10
#: classes drawn at each end (by AP) when there are more than PR_ALL_CLASSES
PR_EACH_END = 3
#: points kept per precision-recall curve in the JSON (subsampled, both ends kept): enough to draw, small to store
PR_POINTS = 200
#: bins of the score histograms
SCORE_BINS = 40
#: above this many classes the confusion matrix has no tick labels (they would overlap)
CONFUSION_LABELS_MAX = 80


# ------------------------------------------------------------------------------------------------ provenance
def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB).

    Linux: ``VmHWM`` of /proc/self/status. Not ``getrusage``'s ``ru_maxrss``, which a process started by
    ``subprocess`` inherits from its parent (the high-water mark survives the vfork + exec), so a small child of
    a big parent would report the parent's size. Elsewhere: ``ru_maxrss``."""
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return ru / (MIB if sys.platform == "darwin" else 1024)


def machine_info() -> dict:
    """CPU model, core count, RAM and platform of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
    except (ValueError, OSError, AttributeError):
        ram = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "ram_gib": None if ram is None else round(ram, 1),
            "platform": platform.platform()}


def versions() -> dict:
    """Versions of python, embedtag and the libraries results depend on (read from package metadata, so nothing
    heavy is imported)."""
    from embedtag import __version__

    out = {"python": platform.python_version(), "embedtag": __version__}
    for dist in ("torch", "tensorflow", "numpy", "scikit-learn", "faiss-cpu", "lightgbm", "soundfile"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def not_run(reason: str) -> dict:
    """The section value of a stage that did not run."""
    return {"status": "not run", "reason": reason}


def _ran(section) -> bool:
    return isinstance(section, dict) and section.get("status", "ok") == "ok"


# ------------------------------------------------------------------------------------------------ references
def references_for(layout: str | None) -> list[dict]:
    """The references of a dataset layout (``fsdkaggle2019``, ``esc50``), best first."""
    return sorted((r for r in REFERENCES if r["dataset"] == layout), key=lambda r: -r["value"])


def rank_among_references(value: float, layout: str | None, metric: str) -> str | None:
    """Where ``value`` (of ``metric``) would rank among the references of ``layout``; None when none apply."""
    refs = [r for r in references_for(layout) if r["metric"] == metric]
    if not refs:
        return None
    above = [r for r in refs if r["value"] > value]
    below = [r for r in refs if r["value"] <= value]
    pos = len(above) + 1
    if not above:
        where = f"above every reference (best: {refs[0]['name']}, {refs[0]['value']:.4f})"
    elif not below:
        where = f"below every reference (lowest: {refs[-1]['name']}, {refs[-1]['value']:.4f})"
    else:
        where = (f"between {above[-1]['name']} ({above[-1]['value']:.4f}) and "
                 f"{below[0]['name']} ({below[0]['value']:.4f})")
    return f"{metric} {value:.4f} would rank #{pos} of {len(refs) + 1}: {where}"


# ------------------------------------------------------------------------------------------------ document model
@dataclass
class _Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)

    def p(self, text: str):
        self.blocks.append(("p", text))

    def note(self, text: str):
        self.blocks.append(("note", text))

    def table(self, headers: list[str], rows: list[list]):
        self.blocks.append(("table", headers, rows))

    def img(self, path: Path | None, alt: str):
        if path is not None:
            self.blocks.append(("img", path, alt))


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.1f}"
    return str(v)


def _md(sections: list[_Section], title: str) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "note":
                out += [f"> {b[1]}", ""]
            elif b[0] == "table":
                headers, rows = b[1], b[2]
                out.append("| " + " | ".join(headers) + " |")
                out.append("|" + "|".join("---" for _ in headers) + "|")
                for r in rows:
                    out.append("| " + " | ".join(_fmt(c).replace("|", "\\|") for c in r) + " |")
                out.append("")
            elif b[0] == "img":
                out += [f"![{b[2]}]({b[1].name})", ""]
    return "\n".join(out)


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f0f0f0}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
nav a{margin-right:1em}
"""


def _html(sections: list[_Section], title: str) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
           "<nav>" + "".join(f'<a href="#{s.id}">{e(s.title)}</a>' for s in sections) + "</nav>"]
    for s in sections:
        out.append(f'<section id="{s.id}"><h2>{e(s.title)}</h2>')
        for b in s.blocks:
            if b[0] == "p":
                out.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "note":
                out.append(f'<p class="note">{e(b[1])}</p>')
            elif b[0] == "table":
                out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr></thead><tbody>")
                for r in b[2]:
                    out.append("<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in r) + "</tr>")
                out.append("</tbody></table>")
            elif b[0] == "img":
                data = base64.b64encode(Path(b[1]).read_bytes()).decode("ascii")
                out.append(f'<img alt="{e(b[2])}" src="data:image/png;base64,{data}">')
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def _cell_html(c) -> str:
    text = _fmt(c)
    if text.startswith("https://"):
        return f'<a href="{html.escape(text)}">{html.escape(text)}</a>'
    return html.escape(text)


# ------------------------------------------------------------------------------------------------ classification
def _thin(x, n: int = PR_POINTS) -> list[float]:
    """At most ``n`` points of a curve, evenly spaced in index, both ends kept."""
    import numpy as np

    x = np.asarray(x)
    if len(x) > n:
        x = x[np.unique(np.linspace(0, len(x) - 1, n).round().astype(int))]
    return [round(float(v), 5) for v in x]


def classification_diagnostics(Y, scores, vocabulary, multi_label: bool) -> dict:
    """A JSON-able summary of ``scores`` (clips x labels) against the multi-hot truth ``Y``, for plots and reports.

    * ``per_class``: ``{"label", "n_pos", "ap"}`` in vocabulary order; ``ap`` is sklearn's
      ``average_precision_score``, None where it says nothing (no positive clip, or every clip positive).
    * ``micro_ap`` (every clip x label pair pooled) and ``macro_ap`` (mean of the defined per-class APs).
    * ``pr_curves``: precision-recall curves (sklearn, thinned to :data:`PR_POINTS` points): every class with a
      positive when there are at most :data:`PR_ALL_CLASSES` classes, else the micro-average and the
      :data:`PR_EACH_END` best and worst classes by AP.
    * ``confusion``: single-label data: ``counts[i][j]`` clips of true label i whose top-scored label is j
      (sklearn's ``confusion_matrix``); multi-label data: not run, with the reason.
    * ``score_histogram``: counts of the scores of true (positive) and false (negative) clip-label pairs.

    ``multi_label=False`` needs exactly one label per clip."""
    import numpy as np
    from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve

    Y = np.asarray(Y) > 0
    P = np.asarray(scores, dtype=np.float64)
    vocab = [str(v) for v in vocabulary]
    if Y.ndim != 2 or Y.shape != P.shape or Y.shape[1] != len(vocab) or not len(Y):
        raise DataError(f"classification_diagnostics: truth {Y.shape}, scores {P.shape} and {len(vocab)} labels "
                        "do not match (expected clips x labels, at least one clip)")
    n_pos = Y.sum(0)
    per_class = []
    for j, lab in enumerate(vocab):
        ap = float(average_precision_score(Y[:, j], P[:, j])) if 0 < n_pos[j] < len(Y) else None
        per_class.append({"label": lab, "n_pos": int(n_pos[j]), "ap": ap})
    defined = [r["ap"] for r in per_class if r["ap"] is not None]
    out: dict = {"n_clips": int(len(Y)), "n_labels": len(vocab), "multi_label": bool(multi_label),
                 "per_class": per_class,
                 "micro_ap": float(average_precision_score(Y.ravel(), P.ravel())) if Y.any() and not Y.all()
                 else None,
                 "macro_ap": float(np.mean(defined)) if defined else None}

    def curve(name: str, y, p, ap) -> dict:
        precision, recall, _ = precision_recall_curve(y, p)
        return {"label": name, "ap": ap, "n_pos": int(y.sum()), "precision": _thin(precision),
                "recall": _thin(recall)}

    ranked = sorted((j for j in range(len(vocab)) if per_class[j]["ap"] is not None),
                    key=lambda j: -per_class[j]["ap"])
    curves = []
    if len(vocab) > PR_ALL_CLASSES:
        if out["micro_ap"] is not None:
            curves.append(curve("micro-average", Y.ravel(), P.ravel(), out["micro_ap"]))
        ends = ranked if len(ranked) <= 2 * PR_EACH_END else ranked[:PR_EACH_END] + ranked[-PR_EACH_END:]
        out["pr_selection"] = (f"the micro-average and the {PR_EACH_END} best and {PR_EACH_END} worst of "
                               f"{len(ranked)} classes by AP")
    else:
        ends = ranked
        out["pr_selection"] = "every class with a positive clip"
    curves += [curve(vocab[j], Y[:, j], P[:, j], per_class[j]["ap"]) for j in ends]
    out["pr_curves"] = curves

    if multi_label:
        out["confusion"] = not_run("multi-label data: a clip can carry several labels, so there is no single true "
                                   "label to set against the top-scored one; the per-class AP and precision-recall "
                                   "curves cover it")
    else:
        k = Y.sum(1)
        if (k != 1).any():
            raise DataError(f"classification_diagnostics: multi_label=False needs exactly one label per clip; "
                            f"{int((k != 1).sum())} of {len(Y)} clips have {int(k[k != 1][0])}")
        cm = confusion_matrix(Y.argmax(1), P.argmax(1), labels=np.arange(len(vocab)))
        out["confusion"] = {"status": "ok", "labels": vocab, "counts": cm.astype(int).tolist(),
                            "accuracy": float(np.trace(cm) / cm.sum())}

    lo, hi = min(0.0, float(P.min())), max(1.0, float(P.max()))
    edges = np.linspace(lo, hi, SCORE_BINS + 1)
    out["score_histogram"] = {"edges": [round(float(e), 6) for e in edges],
                              "positives": np.histogram(P[Y], edges)[0].astype(int).tolist(),
                              "negatives": np.histogram(P[~Y], edges)[0].astype(int).tolist()}
    return out


def plot_classification(Y, scores, vocabulary, multi_label: bool, out_dir: str | os.PathLike, *,
                        footer: str = "") -> list[Path]:
    """Draw the per-class AP bars, precision-recall curves, confusion matrix (single-label data only) and score
    distributions of ``scores`` against the multi-hot truth ``Y`` as PNGs in ``out_dir``; returns the files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _Plots(out_dir, footer).classification(classification_diagnostics(Y, scores, vocabulary, multi_label))


# ------------------------------------------------------------------------------------------------ plots
class _Plots:
    """Writes PNGs into ``out_dir``, each with a provenance footer."""

    def __init__(self, out_dir: Path, footer: str):
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt

        self.plt, self.out_dir, self.footer = plt, out_dir, footer

    def save(self, fig, name: str) -> Path:
        from embedtag.artifacts import atomic_write

        if self.footer:
            fig.text(0.005, 0.005, self.footer, fontsize=6, color="#555", ha="left", va="bottom", wrap=True)
        # the footer's share of the height, whatever the figure's size
        fig.tight_layout(rect=(0, min(0.3, 0.18 / fig.get_figheight()) if self.footer else 0, 1, 1))
        try:
            return atomic_write(self.out_dir / name, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        finally:
            self.plt.close(fig)

    # --- classification plots, drawn from classification_diagnostics()
    def classification(self, diag: dict, what: str = "") -> list[Path]:
        """Every classification plot of ``diag`` (``what``: who made the scores, for the titles)."""
        return [p for p in (self.average_precision(diag, what), self.pr_curves(diag, what),
                            self.confusion_matrix(diag, what), self.score_distribution(diag, what)) if p is not None]

    def average_precision(self, diag: dict, what: str = "") -> Path | None:
        rows = sorted((r for r in diag.get("per_class") or [] if r["ap"] is not None), key=lambda r: r["ap"])
        if not rows:
            return None
        if len(rows) > CONFUSION_LABELS_MAX:
            rows = rows[:PER_CLASS_SHOWN] + [{"label": "…", "n_pos": None, "ap": float("nan")}] + \
                rows[-PER_CLASS_SHOWN:]
        fig, ax = self.plt.subplots(figsize=(7, max(3, 0.2 * len(rows) + 1.4)))
        names = [r["label"] if r["n_pos"] is None else f"{r['label']} ({r['n_pos']})" for r in rows]
        ax.barh(names, [r["ap"] for r in rows], color="tab:blue")
        if diag.get("macro_ap") is not None:
            ax.axvline(diag["macro_ap"], color="k", ls="--", lw=1, label=f"macro AP {diag['macro_ap']:.3f}")
            ax.legend(loc="lower right", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_xlabel("average precision")
        ax.set_title("Per-class average precision; in brackets: positive clips" + (f" ({what})" if what else ""),
                     fontsize=9)
        ax.tick_params(axis="y", labelsize=7 if len(rows) <= 40 else 5)
        return self.save(fig, "average_precision.png")

    def pr_curves(self, diag: dict, what: str = "") -> Path | None:
        curves = diag.get("pr_curves") or []
        if not curves:
            return None
        fig, ax = self.plt.subplots(figsize=(7.5, 4.5))
        colors = self.plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
        for k, c in enumerate(curves):
            micro = c["label"] == "micro-average"
            ax.step(c["recall"], c["precision"], where="post", lw=2.2 if micro else 1.2,
                    color="k" if micro else colors(k % colors.N),
                    label=f"{c['label']} (AP {c['ap']:.3f}, {c['n_pos']} pos.)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.03)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("Precision-recall: " + diag.get("pr_selection", "") + (f" ({what})" if what else ""),
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return self.save(fig, "pr_curves.png")

    def confusion_matrix(self, diag: dict, what: str = "") -> Path | None:
        conf = diag.get("confusion") or {}
        if not _ran(conf) or not conf.get("counts"):
            return None
        import numpy as np

        counts = np.asarray(conf["counts"], dtype=float)
        labels, n = conf["labels"], len(conf["labels"])
        with np.errstate(invalid="ignore", divide="ignore"):
            rates = counts / counts.sum(1, keepdims=True)  # a label no clip carries: an empty (NaN) row
        side = min(20.0, max(5.0, 0.17 * n + 3))
        fig, ax = self.plt.subplots(figsize=(side + 1, side))
        im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="share of the true label's clips")
        if n <= CONFUSION_LABELS_MAX:
            size = 8 if n <= 20 else 7 if n <= 40 else 6
            ax.set_xticks(range(n), labels, rotation=90, fontsize=size)
            ax.set_yticks(range(n), labels, fontsize=size)
        if n <= 20:  # counts stay legible in each cell
            for i in range(n):
                for j in range(n):
                    if counts[i, j]:
                        ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted (top-scored label)")
        ax.set_ylabel("true label")
        ax.set_title(f"Confusion matrix, rows normalised (accuracy {conf['accuracy']:.3f})"
                     + (f", {what}" if what else ""), fontsize=9)
        return self.save(fig, "confusion_matrix.png")

    def score_distribution(self, diag: dict, what: str = "") -> Path | None:
        hist = diag.get("score_histogram") or {}
        if not hist.get("edges"):
            return None
        import numpy as np

        edges = np.asarray(hist["edges"])
        fig, ax = self.plt.subplots(figsize=(7, 3.8))
        for key, name, color in (("negatives", "false labels (negatives)", "tab:red"),
                                 ("positives", "true labels (positives)", "tab:blue")):
            c = np.asarray(hist[key], dtype=float)
            if c.sum():  # densities: positives are a few percent of the pairs
                ax.stairs(c / c.sum() / np.diff(edges), edges, fill=True, alpha=0.45, color=color,
                          label=f"{name}: {int(c.sum())} clip-label pairs")
        ax.set_xlabel("score")
        ax.set_yscale("log")  # the tails, where true and false labels overlap, stay visible beside the peaks
        ax.set_ylabel("density (log scale)")
        ax.set_title("Score distributions of true and false labels" + (f" ({what})" if what else ""), fontsize=9)
        ax.legend(fontsize=7)
        return self.save(fig, "score_distribution.png")

    def eval_per_class(self, table, overall: float) -> Path | None:
        """Per-class lwlrap bars of an evaluation (every class)."""
        rows = table.sort_values("lwlrap")
        if not len(rows):
            return None
        fig, ax = self.plt.subplots(figsize=(7, max(3, 0.2 * len(rows) + 1.4)))
        ax.barh(rows["label"], rows["lwlrap"], color="tab:blue")
        ax.axvline(overall, color="k", ls="--", lw=1, label=f"overall lwlrap {overall:.3f}")
        ax.set_xlim(0, 1)
        ax.set_xlabel("per-class lwlrap")
        ax.legend(loc="lower right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7 if len(rows) <= 40 else 5)
        return self.save(fig, "per_class_lwlrap.png")

    def durations(self, profile: dict) -> Path | None:
        hist = profile.get("duration_histogram") or {}
        if not hist.get("counts"):
            return None
        edges, counts = hist["edges_s"], hist["counts"]
        fig, ax = self.plt.subplots(figsize=(7, 3.6))
        ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge",
               color="tab:blue", edgecolor="white")
        ax.set_xlabel("clip duration (s)")
        ax.set_ylabel("clips")
        ax.set_title(f"Duration histogram ({profile.get('n_readable', 0)} readable clips)")
        return self.save(fig, "duration_histogram.png")

    def strategies(self, heads: dict) -> Path | None:
        rows = heads.get("rows") or []
        if not rows:
            return None
        import numpy as np

        strategies = list(dict.fromkeys(r["strategy"] for r in rows))
        names = list(dict.fromkeys(r["head"] for r in rows))
        fig, ax = self.plt.subplots(figsize=(max(6, 1.3 * len(strategies) * len(names) ** 0.5 + 3), 4))
        width = 0.8 / len(names)
        x = np.arange(len(strategies))
        for k, h in enumerate(names):
            vals = [next((r["lwlrap"] for r in rows if r["head"] == h and r["strategy"] == s), np.nan)
                    for s in strategies]
            bars = ax.bar(x + k * width - 0.4 + width / 2, vals, width, label=h)
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
        for name, color in (("prior", "grey"), ("zero_shot", "tab:red")):
            v = (heads.get("baselines") or {}).get(name)
            if v is not None:
                ax.axhline(v, ls="--", color=color, lw=1, label=f"{name.replace('_', '-')} baseline {v:.3f}")
        ax.set_xticks(x, strategies, rotation=20 if len(strategies) > 2 else 0, ha="right" if len(strategies) > 2
                      else "center", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("cross-validated lwlrap")
        ax.set_title("lwlrap by head and noisy-label strategy")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
        return self.save(fig, "lwlrap_by_strategy.png")

    def per_class(self, heads: dict) -> Path | None:
        table = heads.get("per_class") or []
        if not table:
            return None
        rows = sorted(table, key=lambda r: r["lwlrap"])
        if len(rows) > 2 * PER_CLASS_SHOWN:
            worst, best = rows[:PER_CLASS_SHOWN], rows[-PER_CLASS_SHOWN:]
            rows = worst + [{"label": "…", "lwlrap": float("nan")}] + best
        fig, ax = self.plt.subplots(figsize=(7, max(3, 0.26 * len(rows) + 1.2)))
        colors = ["tab:red" if r["lwlrap"] < 0.5 else "tab:blue" for r in rows]
        ax.barh([r["label"] for r in rows], [r["lwlrap"] for r in rows], color=colors)
        best = heads.get("best") or {}
        if best.get("lwlrap") is not None:
            ax.axvline(best["lwlrap"], color="k", ls="--", lw=1, label=f"overall {best['lwlrap']:.3f}")
            ax.legend(loc="lower right", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_xlabel("per-class lwlrap (out-of-fold)")
        ax.set_title(f"Per-class lwlrap, worst and best classes ({best.get('head')}, {best.get('strategy')})",
                     fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        return self.save(fig, "per_class_lwlrap.png")

    def confusions(self, heads: dict) -> Path | None:
        pairs = heads.get("confused_pairs") or []
        if not pairs:
            return None
        pairs = pairs[::-1]
        fig, ax = self.plt.subplots(figsize=(7, max(2.5, 0.3 * len(pairs) + 1.2)))
        ax.barh([f"{p['true']} → {p['predicted']}" for p in pairs], [p["count"] for p in pairs], color="tab:orange")
        ax.set_xlabel("clips whose top prediction was the wrong label")
        ax.set_title("Most-confused label pairs (true → predicted)")
        ax.tick_params(axis="y", labelsize=7)
        return self.save(fig, "confused_pairs.png")

    def retrieval(self, retrieval: dict) -> Path | None:
        ks = retrieval.get("k") or []
        if not ks:
            return None
        fig, ax = self.plt.subplots(figsize=(6, 3.6))
        ax.plot(ks, retrieval["precision_at_k"], "o-", label="precision@k")
        if retrieval.get("map_at_k"):
            ax.plot(ks, retrieval["map_at_k"], "s-", label="mAP@k")
        if retrieval.get("chance_precision") is not None:
            ax.axhline(retrieval["chance_precision"], ls="--", color="grey",
                       label=f"chance {retrieval['chance_precision']:.3f}")
        ax.set_xlabel("k (nearest neighbours, leave-one-out)")
        ax.set_ylim(0, 1.05)
        ax.set_xticks(ks)
        ax.set_title(f"Retrieval ({retrieval.get('metric', 'cosine')}, {retrieval.get('kind', '')} index)")
        ax.legend(fontsize=8)
        return self.save(fig, "retrieval_precision_at_k.png")

    def resources(self, res: dict) -> Path | None:
        stages = res.get("stages") or []
        if not stages:
            return None
        fig, (a1, a2) = self.plt.subplots(1, 2, figsize=(9, 3.6))
        names = [s["stage"] for s in stages]
        a1.barh(names, [s["elapsed_s"] for s in stages], color="tab:green")
        a1.set_xlabel("wall time (s)")
        cps = res.get("clips_per_s")
        a1.set_title("Time per stage" + (f" (extract {cps:.1f} clips/s)" if cps else ""), fontsize=9)
        a2.plot(range(len(stages)), [s["peak_rss_mib"] for s in stages], "o-", color="tab:purple")
        a2.set_xticks(range(len(stages)), names, rotation=30, ha="right", fontsize=7)
        a2.set_ylabel("peak RSS so far (MiB)")
        a2.set_title("Peak memory (getrusage)", fontsize=9)
        return self.save(fig, "throughput_memory.png")


# ------------------------------------------------------------------------------------------------ report
def _footer(prov: dict) -> str:
    m, v = prov.get("machine", {}), prov.get("versions", {})
    sha = (prov.get("weights_sha256") or "")[:12] or "n/a"
    return (f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('ram_gib', '?')} GiB | device "
            f"{prov.get('device', '?')} | python {v.get('python')} torch {v.get('torch')} tensorflow "
            f"{v.get('tensorflow')} embedtag {v.get('embedtag')} | {prov.get('backbone', '?')} weights sha256 "
            f"{sha} | seed {prov.get('seed')} | {prov.get('time_utc', '?')}")


def _not_run_section(sec: _Section, value) -> bool:
    """Add the 'not run' line when the stage did not run; True if it did run."""
    if _ran(value):
        return True
    reason = value.get("reason") if isinstance(value, dict) else "no result"
    sec.note(f"not run: {reason}")
    return False


def write_report(results: dict, out_dir: str | os.PathLike, *, title: str | None = None) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots of a benchmark ``results`` dict into ``out_dir``.

    Returns ``{"markdown": path, "html": path, "plots": [paths]}``."""
    if not isinstance(results, dict) or "dataset" not in results or "provenance" not in results:
        raise DataError("write_report needs a benchmark results dict (with 'dataset' and 'provenance')")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds, prov = results["dataset"], results["provenance"]
    plots = _Plots(out_dir, _footer(prov))
    title = title or f"embedtag benchmark: {ds.get('name')} with {prov.get('backbone')}"
    written: list[Path] = []
    sections: list[_Section] = []

    heads = results.get("heads") or not_run("no result")
    layout = ds.get("layout")

    # --- summary and references
    summary = _Section("summary", "Summary")
    sections.append(summary)
    summary.p("Measured on: " + _footer(prov) + " (details under Provenance; every plot carries this line).")
    best = heads.get("best") if _ran(heads) else None
    summary.p(f"Dataset {ds.get('name')} ({ds.get('path')}): {ds.get('n_clips')} clips, {ds.get('n_labels')} labels, "
              f"{'multi-label' if ds.get('multi_label') else 'single-label'}, layout {layout}"
              + (", with a noisy subset" if ds.get("has_noisy") else "") + ".")
    if best:
        line = (f"Best head: {best['head']} with strategy '{best['strategy']}', {heads.get('cv_description', '')} "
                f"lwlrap {best['lwlrap']:.4f}")
        if best.get("accuracy") is not None:
            line += f", accuracy {best['accuracy']:.4f}"
        if best.get("test_lwlrap") is not None:
            line += f"; on the dataset's labelled test set lwlrap {best['test_lwlrap']:.4f}"
        summary.p(line + ".")
        prior = (heads.get("baselines") or {}).get("prior")
        if prior is not None and best["lwlrap"] <= prior:
            summary.note(f"No head beats the label-prior baseline (lwlrap {prior:.4f}, no audio used): the metric "
                         "is dominated by labels most clips carry; see the profile's label frequencies.")
    else:
        summary.note(f"heads not run: {heads.get('reason')}")

    refs_sec = _Section("references", "References")
    sections.append(refs_sec)
    rows = [[r["dataset"], r["name"], r["metric"], r["value"], r["split"], r["source"], r["url"]]
            for r in sorted(REFERENCES, key=lambda r: (r["dataset"], -r["value"]))]
    refs_sec.table(["dataset", "reference", "metric", "value", "split", "source", "url"], rows)
    for key, warn in REFERENCE_WARNINGS.items():
        refs_sec.note(f"{key}: {warn}")
    if best:
        ranks = []
        if layout == "esc50" and best.get("accuracy") is not None:
            ranks.append(rank_among_references(best["accuracy"], layout, "accuracy"))
        if layout == "fsdkaggle2019":
            value = best.get("test_lwlrap") if best.get("test_lwlrap") is not None else best["lwlrap"]
            r = rank_among_references(value, layout, "lwlrap")
            if r:
                where = "the labelled test set" if best.get("test_lwlrap") is not None else \
                    "cross-validation on the training clips, not the competition test set (indicative only)"
                ranks.append(f"{r} (measured on {where})")
        ranks = [r for r in ranks if r]
        n_ref = REFERENCE_LABELS.get(layout)
        if ranks and n_ref is not None and ds.get("n_labels") != n_ref:
            ranks = [r + f"; caution: this dataset has {ds.get('n_labels')} labels where the references' has {n_ref},"
                         " so the comparison is indicative only" for r in ranks]
        if ranks:
            for r in ranks:
                refs_sec.p("Rank: " + r + ".")
                summary.p("Rank among the published references: " + r + ".")
            if layout in REFERENCE_WARNINGS:
                summary.note(REFERENCE_WARNINGS[layout])
        else:
            refs_sec.p(f"No published reference applies to this dataset (layout {layout}); the references above are "
                       "for FSDKaggle2019 and ESC-50 and are shown for context only, so this result is not ranked.")

    # --- profile
    prof_sec = _Section("profile", "Dataset profile")
    sections.append(prof_sec)
    prof = results.get("profile") or not_run("no result")
    if _not_run_section(prof_sec, prof):
        st = prof.get("duration_s_stats") or {}
        prof_sec.table(["clips", "readable", "labelled", "labels", "total audio (h)", "min (s)", "median (s)",
                        "max (s)"],
                       [[prof["n_clips"], prof["n_readable"], prof["n_labelled"], prof["n_labels"],
                         prof["total_duration_s"] / 3600, st.get("min"), st.get("median"), st.get("max")]])
        prof_sec.table(["sample rate (Hz)", "clips"], [[k, v] for k, v in prof["sample_rates"].items()])
        prof_sec.table(["channels", "clips"], [[k, v] for k, v in prof["channels"].items()])
        prof_sec.table(["labels per clip", "clips"], [[k, v] for k, v in prof["labels_per_clip"].items()])
        subsets = list(prof.get("label_counts") or {})
        if subsets:
            counts = prof["label_counts"]
            vocab = list(counts[subsets[0]])
            prof_sec.table(["label"] + [f"clips ({s})" for s in subsets],
                           [[lab] + [counts[s].get(lab, 0) for s in subsets] for lab in vocab])
        written.append(plots.durations(prof))
        prof_sec.img(written[-1], "duration histogram")
        fc = prof.get("flag_counts") or {}
        prof_sec.p("Flagged clips: " + ", ".join(f"{k} {v}" for k, v in fc.items())
                   + f" (thresholds: {prof.get('thresholds')}; levels checked: {prof.get('levels_checked')}).")
        flags = prof.get("flags") or []
        if flags:
            shown = flags[:50]
            prof_sec.table(["clip", "flag", "detail"], [[f["clip_id"], f["kind"], f["detail"]] for f in shown])
            if len(flags) > len(shown):
                prof_sec.p(f"... and {len(flags) - len(shown)} more (all in results.json).")

    # --- heads
    heads_sec = _Section("heads", "Heads and noisy-label strategies")
    sections.append(heads_sec)
    if _not_run_section(heads_sec, heads):
        heads_sec.p(f"Evaluation: {heads.get('cv_description', '')}; seed {prov.get('seed')}. lwlrap is the "
                    "label-weighted label-ranking average precision (the DCASE 2019 task 2 metric).")
        cols = ["head", "strategy", "lwlrap", "fold std", "macro mAP", "accuracy", "test lwlrap", "time (s)"]
        heads_sec.table(cols, [[r["head"], r["strategy"], r["lwlrap"], r.get("fold_std"), r.get("macro_map"),
                                r.get("accuracy"), r.get("test_lwlrap"), r.get("elapsed_s")] for r in heads["rows"]])
        bl = heads.get("baselines") or {}
        heads_sec.table(["baseline", "lwlrap"], [["label prior (no audio)", bl.get("prior")],
                                                 ["zero-shot (AudioSet scores mapped by name)", bl.get("zero_shot")]])
        for note in heads.get("notes") or []:
            heads_sec.note(note)
        written.append(plots.strategies(heads))
        heads_sec.img(written[-1], "lwlrap by head and strategy")

    pc_sec = _Section("per-class", "Per-class lwlrap")
    sections.append(pc_sec)
    if _not_run_section(pc_sec, heads):
        table = sorted(heads.get("per_class") or [], key=lambda r: r["lwlrap"])
        written.append(plots.per_class(heads))
        pc_sec.img(written[-1], "per-class lwlrap")
        cols = ["label", "clips", "lwlrap", "weight"]
        if len(table) <= 2 * PER_CLASS_SHOWN:
            pc_sec.p(f"All {len(table)} classes, worst first (out-of-fold, {best['head']}, {best['strategy']}):")
            pc_sec.table(cols, [[r["label"], r.get("n_clips"), r["lwlrap"], r.get("weight")] for r in table])
        else:
            n = PER_CLASS_SHOWN
            pc_sec.p(f"Worst {n} classes (out-of-fold, {best['head']}, {best['strategy']}):")
            pc_sec.table(cols, [[r["label"], r.get("n_clips"), r["lwlrap"], r.get("weight")] for r in table[:n]])
            pc_sec.p(f"Best {n} classes:")
            pc_sec.table(cols, [[r["label"], r.get("n_clips"), r["lwlrap"], r.get("weight")]
                                for r in table[::-1][:n]])

    conf_sec = _Section("confusions", "Most-confused label pairs")
    sections.append(conf_sec)
    if _not_run_section(conf_sec, heads):
        pairs = heads.get("confused_pairs") or []
        if pairs:
            conf_sec.p("Clips whose top-ranked label was wrong, counted by (a true label, the predicted label), "
                       "out-of-fold predictions of the best head.")
            conf_sec.table(["true label", "predicted label", "clips"],
                           [[p["true"], p["predicted"], p["count"]] for p in pairs])
            written.append(plots.confusions(heads))
            conf_sec.img(written[-1], "most-confused label pairs")
        else:
            conf_sec.p("No clip's top-ranked label was wrong.")

    # --- the best head's classification plots (out-of-fold scores)
    if not _ran(heads):
        diag = heads
    else:
        diag = heads.get("diagnostics") or not_run("this results.json predates the classification plots")
    what = f"{best['head']}, {best['strategy']}, out-of-fold" if best else ""
    _classification_sections(sections, written, plots, diag, what)

    # --- retrieval
    ret_sec = _Section("retrieval", "Retrieval")
    sections.append(ret_sec)
    ret = results.get("retrieval") or not_run("no result")
    if _not_run_section(ret_sec, ret):
        ret_sec.p(f"Leave-one-out nearest-neighbour search over the store ({ret.get('kind')} FAISS index, "
                  f"{ret.get('metric')}, {ret.get('n_queries')} queries): a neighbour is relevant when it shares a "
                  "label with the query.")
        ret_sec.table(["k", "precision@k", "mAP@k"],
                      [[k, p, m] for k, p, m in zip(ret["k"], ret["precision_at_k"], ret["map_at_k"])])
        ret_sec.p(f"Chance precision: {_fmt(ret.get('chance_precision'))}.")
        if ret.get("note"):
            ret_sec.note(ret["note"])
        written.append(plots.retrieval(ret))
        ret_sec.img(written[-1], "retrieval precision@k")

    # --- fine-tuning
    ft_sec = _Section("finetune", "Fine-tuning")
    sections.append(ft_sec)
    ft = results.get("finetune") or not_run("not requested (use --finetune)")
    if _not_run_section(ft_sec, ft):
        if ft.get("cv_lwlrap") is not None and ft.get("best_head_lwlrap") is not None:
            ft_sec.p(f"Fine-tuned {ft['backbone']} end to end: out-of-fold lwlrap {ft['cv_lwlrap']:.4f} against "
                     f"{ft['best_head_lwlrap']:.4f} for the best head on frozen embeddings ({ft['best_head']}).")
        rows = [[k, ", ".join(f"{x:.4f}" for x in v) if isinstance(v, list) else v] for k, v in ft.items()
                if k not in ("status", "note", "notes")]
        ft_sec.table(["item", "value"], rows)
        for key in ("notes", "note"):
            if ft.get(key):
                ft_sec.note(str(ft[key]))

    # --- resources
    res_sec = _Section("resources", "Throughput and memory")
    sections.append(res_sec)
    res = results.get("resources") or not_run("no result")
    if _not_run_section(res_sec, res):
        ext = results.get("extract") or {}
        if _ran(ext) and not ext.get("n_stored") and ext.get("n_skipped"):
            res_sec.note(f"Extraction throughput not measured: all {ext['n_skipped']} clips were already in the store "
                         "(a resumed run); benchmark into a new --out to measure it.")
        elif _ran(ext):
            res_sec.p(f"Extraction: {ext.get('n_stored')} clips ({ext.get('audio_s', 0):.0f} s of audio) in "
                      f"{ext.get('elapsed_s', 0):.1f} s on {ext.get('device')}: {ext.get('clips_per_s', 0):.1f} "
                      f"clips/s, {ext.get('realtime_factor', 0):.0f}x real time; {ext.get('n_failed', 0)} failed, "
                      f"{ext.get('n_skipped', 0)} already in the store.")
        res_sec.table(["stage", "wall time (s)", "peak RSS so far (MiB)"],
                      [[s["stage"], s["elapsed_s"], s["peak_rss_mib"]] for s in res["stages"]])
        written.append(plots.resources(res))
        res_sec.img(written[-1], "throughput and memory")

    # --- provenance
    pv = _Section("provenance", "Provenance")
    sections.append(pv)
    m, v = prov.get("machine", {}), prov.get("versions", {})
    pv.table(["item", "value"],
             [["machine", f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM"],
              ["platform", m.get("platform")], ["device", prov.get("device")],
              ["backbone", prov.get("backbone")], ["weights sha256", prov.get("weights_sha256")],
              ["store fingerprint", prov.get("store_fingerprint")], ["seed", prov.get("seed")],
              ["folds", prov.get("folds")], ["started (UTC)", prov.get("time_utc")],
              ["total wall time (s)", prov.get("elapsed_s")], ["command", prov.get("command")]]
             + [[f"version: {k}", val] for k, val in v.items()])

    md_path, html_path = _write_documents(sections, title, out_dir)
    return {"markdown": md_path, "html": html_path, "plots": [p for p in written if p is not None]}


def _write_documents(sections: list[_Section], title: str, out_dir: Path) -> tuple[Path, Path]:
    from embedtag.artifacts import atomic_write

    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    for path, text in ((md_path, _md(sections, title)), (html_path, _html(sections, title))):
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    return md_path, html_path


def _classification_sections(sections: list[_Section], written: list, plots: _Plots, diag: dict, what: str, *,
                             ap_table: bool = True) -> None:
    """The sections of :func:`classification_diagnostics` ``diag`` (a "not run" value: each says why)."""
    ap_sec = _Section("average-precision", "Per-class average precision and precision-recall curves")
    cm_sec = _Section("confusion-matrix", "Confusion matrix")
    sd_sec = _Section("score-distributions", "Score distributions")
    sections += [ap_sec, cm_sec, sd_sec]
    if not all([_not_run_section(sec, diag) for sec in (ap_sec, cm_sec, sd_sec)]):
        return
    ap_sec.p(f"Average precision (sklearn's average_precision_score) of each class over {diag['n_clips']} clips "
             f"({what}): macro {_fmt(diag.get('macro_ap'))}, micro {_fmt(diag.get('micro_ap'))}. Classes without a "
             "positive clip (or with every clip positive) have no AP.")
    written.append(plots.average_precision(diag, what))
    ap_sec.img(written[-1], "per-class average precision")
    written.append(plots.pr_curves(diag, what))
    ap_sec.p(f"Precision-recall curves: {diag.get('pr_selection')}.")
    ap_sec.img(written[-1], "precision-recall curves")
    rows = sorted(diag["per_class"], key=lambda r: (r["ap"] is None, -(r["ap"] or 0)))
    if ap_table:
        ap_sec.table(["label", "positive clips", "AP"], [[r["label"], r["n_pos"], r["ap"]] for r in rows])
    conf = diag.get("confusion") or not_run("no result")
    if _not_run_section(cm_sec, conf):
        cm_sec.p(f"Each clip's true label (rows) against its top-scored label (columns), rows normalised to the "
                 f"share of the true label's clips; accuracy {conf['accuracy']:.4f}.")
        written.append(plots.confusion_matrix(diag, what))
        cm_sec.img(written[-1], "confusion matrix")
    hist = diag.get("score_histogram") or {}
    sd_sec.p(f"Scores of the clip-label pairs that are true (a clip's labels: {sum(hist.get('positives', []))}) and "
             f"false ({sum(hist.get('negatives', []))}), each as a density: the less they overlap, the better one "
             "threshold separates them.")
    written.append(plots.score_distribution(diag, what))
    sd_sec.img(written[-1], "score distributions")


def _json_safe(v):
    """NaN (an undefined per-class score) -> None, numpy scalars -> Python: strict JSON."""
    import math

    import numpy as np

    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_evaluation_report(result: dict, out_dir: str | os.PathLike, *, title: str | None = None,
                            provenance: dict | None = None) -> dict:
    """Write the report of an :func:`embedtag.heads.evaluate_head` result into ``out_dir``: ``metrics.json`` (the
    metrics, one record per class with its average precision, micro / macro AP, and the confusion matrix of
    single-label data or why there is none), ``per_class.csv``, the PNG plots (per-class AP, precision-recall
    curves, confusion matrix, score distributions, per-class lwlrap), ``report.md`` and a self-contained
    ``report.html``. Every file is written atomically. ``provenance``: what was evaluated (shown in the report and
    saved in metrics.json). Returns ``{"metrics", "per_class", "markdown", "html": path, "plots": [paths]}``."""
    import numpy as np

    from embedtag.artifacts import atomic_write, atomic_write_json

    for key in ("truth", "scores", "per_class", "lwlrap", "n_clips"):
        if key not in result:
            raise DataError(f"write_evaluation_report needs an evaluate_head result (missing {key!r})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prov = {"time_utc": utc_now(), **(provenance or {})}
    Y, P, table = np.asarray(result["truth"]), np.asarray(result["scores"]), result["per_class"]
    vocab = list(table["label"])
    multi = bool((Y.sum(1) != 1).any())  # the data's: a single-label head on multi-label clips is still multi
    diag = classification_diagnostics(Y, P, vocab, multi)
    summary = {k: v for k, v in result.items() if k not in ("per_class", "truth", "scores", "clip_ids", "report")}
    metrics = _json_safe({**summary, "multi_label": multi, "micro_ap": diag["micro_ap"], "macro_ap": diag["macro_ap"],
                          "confusion_matrix": diag["confusion"], "per_class": table.to_dict("records"),
                          "provenance": prov})
    paths = {"metrics": atomic_write_json(out_dir / "metrics.json", metrics),
             "per_class": atomic_write(out_dir / "per_class.csv", lambda tmp: table.to_csv(tmp, index=False))}

    v = prov.get("versions") or {}
    footer = " | ".join(x for x in (prov.get("predictor"), f"store {prov['store']}" if prov.get("store") else None,
                                    f"embedtag {v['embedtag']}" if v.get("embedtag") else None, prov["time_utc"]) if x)
    plots = _Plots(out_dir, footer)
    written: list = []
    sections: list[_Section] = []
    title = title or "embedtag evaluate" + (f": {prov['predictor']}" if prov.get("predictor") else "")

    summ = _Section("summary", "Summary")
    sections.append(summ)
    summ.p(f"{result['n_clips']} labelled clips, {len(vocab)} labels, "
           f"{'multi-label' if multi else 'single-label'} data. Decisions (precision / recall / F1): "
           f"{result.get('thresholds')}.")
    rows = [["lwlrap", result["lwlrap"]], ["macro mAP", result.get("macro_map")], ["micro AP", diag["micro_ap"]]]
    if result.get("accuracy") is not None:
        rows.append(["accuracy (top-1)", result["accuracy"]])
    rows += [[f"{k.replace('_', ' ')}", result.get(k)] for k in
             ("micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall", "macro_f1")
             if result.get(k) is not None]
    summ.table(["metric", "value"], rows)
    if result.get("train_overlap"):
        summ.note(f"{result['train_overlap']} of {result['n_clips']} evaluated clips were used to train this "
                  "predictor: in-sample scores, higher than on new clips.")

    _classification_sections(sections, written, plots, diag, "", ap_table=False)  # AP is in the per-class table

    pc = _Section("per-class", "Per class")
    sections.append(pc)
    written.append(plots.eval_per_class(table, result["lwlrap"]))
    pc.img(written[-1], "per-class lwlrap")
    cols = ["label", "n_clips", "lwlrap", "weight", "average_precision", "threshold", "precision", "recall", "f1"]
    pc.table(["label", "clips", "lwlrap", "weight", "AP", "threshold", "P", "R", "F1"],
             [[_json_safe(r[c]) for c in cols] for r in table.sort_values("lwlrap").to_dict("records")])

    pv = _Section("provenance", "Provenance")
    sections.append(pv)
    pv.table(["item", "value"], [[k, val] for k, val in prov.items() if k != "versions"]
             + [[f"version: {k}", val] for k, val in v.items()])
    paths["markdown"], paths["html"] = _write_documents(sections, title, out_dir)
    paths["plots"] = [p for p in written if p is not None]
    return paths


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
