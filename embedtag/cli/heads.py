"""`embedtag fit-head`, `embedtag predict`, `embedtag evaluate`: thin wrappers over embedtag.heads."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from embedtag.cli._app import app
from embedtag.cli._options import (
    MULTI_LABEL,
    NOISY_WEIGHT,
    OUT_STDOUT,
    QUIET,
    VERBOSE,
    CsvJson,
    Mode,
    TableJson,
    device_option,
    format_option,
    info,
    log,
    mode_option,
    setup_logging,
    top_k_option,
    write_output,
)


class HeadKind(str, Enum):
    # the keys of embedtag.heads.HEADS, listed here so that --help does not import the heads (torch, sklearn)
    mlp = "mlp"
    logreg = "logreg"
    lightgbm = "lightgbm"
    knn = "knn"
    prior = "prior"
    auto = "auto"


class Confidence(str, Enum):
    weight = "weight"
    drop = "drop"


def _parse_params(items: list[str]) -> dict:
    """``["hidden=[256,256]", "dropout=0.5"]`` -> dict; values are JSON where they parse, else strings."""
    from embedtag.errors import ParamError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ParamError(f"--param {item!r}: expected KEY=VALUE (e.g. --param dropout=0.5)")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


@app.command("fit-head", epilog="Examples:\n\n  embedtag fit-head stores/office --head mlp --folds 5 "
                                "--out heads/office\n\n"
                                "  embedtag fit-head stores/fsd --labels FSDKaggle2019/ --head mlp --noisy-weight 0.3 "
                                "--bootstrap-beta 0.7 --out heads/fsd\n\n"
                                "  embedtag fit-head stores/x --labels labels.csv --head logreg -p C=0.1 --out heads/x "
                                "--format json")
def fit_head_cmd(
    store: Path = typer.Argument(..., help="Embedding store (from `embedtag extract`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Head directory to write (config.json + weights)."),
    labels: Path | None = typer.Option(None, help="fname,labels CSV or dataset folder (FSDKaggle2019, ESC-50, "
                                                  "labels.csv+audio/); default: the store's own labels."),
    head: HeadKind = typer.Option(HeadKind.auto, help="The classifier; auto compares logreg (C chosen), mlp, "
                                                      "knn and, from 1000 clips, lightgbm by inner CV and keeps "
                                                      "the mean of the best two's probabilities (-p rule=best: "
                                                      "the best alone unless that mean wins)."),
    param: list[str] = typer.Option([], "--param", "-p", help="Head parameter KEY=VALUE (JSON values), repeatable."),
    folds: int = typer.Option(0, min=0, help="Cross-validate with this many stratified folds first (0: no CV)."),
    noisy_weight: float = typer.Option(NOISY_WEIGHT, "--noisy-weight", min=0.0, help="Loss weight of noisy-subset "
                                                                                     "clips (0: curated only; 1: "
                                                                                     "pooled with curated)."),
    bootstrap_beta: float | None = typer.Option(None, "--bootstrap-beta", help="MLP: soft bootstrapping (Lsoft) "
                                                                              "of noisy clips, beta in (0, 1]."),
    label_smoothing: float | None = typer.Option(None, "--label-smoothing", help="MLP: label smoothing epsilon."),
    confidence: Confidence | None = typer.Option(None, help="Two-stage confidence weighting of noisy clips."),
    confidence_threshold: float = typer.Option(0.5, "--confidence-threshold", help="With --confidence drop."),
    mode: Mode = mode_option(),
    seed: int = typer.Option(0, min=0, help="Seed of folds and training."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a head already in --out."),
    fmt: TableJson = format_option(TableJson.table, "table, or json: the fit report and the head's metrics."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Train a head on a store's embeddings and labels; optionally report cross-validated lwlrap first."""
    setup_logging(quiet, verbose)
    from rich.console import Console
    from rich.table import Table

    from embedtag import artifacts
    from embedtag.heads import fit_head, make_head

    head = head.value
    params = _parse_params(param)
    log.debug("fit-head %s on %s (labels %s), params %s, noisy_weight %s", head, store, labels, params, noisy_weight)
    if bootstrap_beta is not None:
        params["bootstrap_beta"] = bootstrap_beta
    if label_smoothing is not None:
        params["label_smoothing"] = label_smoothing
    # bad parameters (-p C=1e309 parses as inf), then a store, an index, a run or (without --overwrite) a head
    # in --out: refused before anything is written or trained
    make_head(head, **params)
    artifacts.prepare_output(out, artifacts.HEAD, overwrite=overwrite)
    fitted, report = fit_head(store, labels, head=head, params=params, noisy_weight=noisy_weight,
                              confidence=None if confidence is None else confidence.value,
                              confidence_threshold=confidence_threshold, folds=folds,
                              multi_label=MULTI_LABEL[mode.value], seed=seed, progress=not quiet)
    fitted.save(out, overwrite=True)  # --out was checked above
    if fmt == TableJson.json:
        write_output(json.dumps({"head": str(out), "kind": head, **fitted.metrics}, indent=1, default=str), "-")
        return
    t = Table(title=f"fit-head {head} → {out}", show_header=False, title_justify="left")
    t.add_row("clips / labels", f"{report.n_clips} / {report.n_labels} "
                                f"({'multi-label' if report.multi_label else 'single-label'})")
    if report.cv is not None:
        t.add_row(f"CV lwlrap ({len(report.cv.fold_lwlrap)} folds)",
                  f"{report.cv.lwlrap:.4f}  (folds: {', '.join(f'{x:.3f}' for x in report.cv.fold_lwlrap)})")
        t.add_row("prior baseline (CV)", f"{report.prior_cv_lwlrap:.4f}")
        if report.zero_shot_lwlrap is not None:
            t.add_row("zero-shot baseline", f"{report.zero_shot_lwlrap:.4f}")
    t.add_row("train lwlrap", f"{fitted.metrics['train_lwlrap']:.4f}")
    if "oof_f1_micro" in fitted.metrics:
        t.add_row("thresholds (OOF, max F1)", f"F1 micro {fitted.metrics['oof_f1_micro']:.4f}, macro "
                                              f"{fitted.metrics['oof_f1_macro']:.4f} "
                                              f"({fitted.metrics['threshold_folds']} folds)")
    if "noisy_clips" in fitted.metrics:
        t.add_row("noisy clips kept", f"{fitted.metrics['noisy_kept']} / {fitted.metrics['noisy_clips']} "
                                      f"(mean weight {fitted.metrics['noisy_mean_weight']:.3f})")
    auto = fitted.metrics.get("auto")
    if auto:
        t.add_row("auto: chosen", f"{auto['chosen']}" + (f" (ensemble inner lwlrap {auto['ensemble_inner_lwlrap']:.4f})"
                                                         if auto["ensemble"] else ""))
        t.add_row(f"auto: inner lwlrap ({auto['inner_folds']} folds)",
                  ", ".join(f"{k} {v:.4f}" for k, v in sorted(auto["inner_lwlrap"].items(), key=lambda kv: -kv[1])))
    t.add_row("fit time", f"{report.fit_time_s:.1f} s")
    Console().print(t)


def _is_store(p: Path) -> bool:
    from embedtag import artifacts
    from embedtag.errors import ArtifactError

    try:
        info = artifacts.identify(p)
    except ArtifactError:
        return False
    return info is not None and info.kind == artifacts.STORE


@app.command(epilog="Examples:\n\n  embedtag predict heads/fsd stores/test --out submission.csv\n\n"
                    "  embedtag predict heads/office clips/ -k 3 --format json --out tags.json\n\n"
                    "  embedtag predict heads/office cough.wav -q | head -3   # no --out: stdout\n\n"
                    "  embedtag predict heads/office clips/ --threshold auto   # adds a labels column\n\n"
                    "  embedtag predict heads/office long.wav --frames --window-s 1 --events --plot timeline.png")
def predict(
    head: Path = typer.Argument(..., help="Head directory (from `embedtag fit-head`) or fine-tuned run."),
    inputs: list[Path] = typer.Argument(..., help="An embedding store, or audio files / directories (embedded "
                                                  "on the fly with the head's backbone)."),
    out: str = OUT_STDOUT,
    top_k: int | None = top_k_option(None, "Write the K most probable tags per clip instead of every probability."),
    fmt: CsvJson = format_option(CsvJson.csv, "csv: the Kaggle submission (fname, one column per label in "
                                              "vocabulary order); json: one record per clip."),
    threshold: str | None = typer.Option(None, "--threshold", "-t", help="auto (the head's per-class thresholds, "
                                                                         "else 0.5) or a number: add a `labels` "
                                                                         "column (comma-separated labels at or "
                                                                         "above it; single-label: the top label)."),
    frames: bool = typer.Option(False, "--frames", help="Tag over time: one row per window (clip_id, start_s, "
                                                        "end_s, one score per label) instead of one per clip."),
    window_s: float | None = typer.Option(None, "--window-s", help="With --frames: window length in seconds "
                                                                   "(default: the head's extraction window)."),
    hop_s: float | None = typer.Option(None, "--hop-s", help="With --frames: hop between windows in seconds "
                                                             "(default: the window length)."),
    events: bool = typer.Option(False, "--events", help="With --frames: merge windows into events (clip_id, label, "
                                                        "onset_s, offset_s, score) at the thresholds, after a "
                                                        "median filter over 3 windows."),
    plot: Path | None = typer.Option(None, "--plot", help="With --frames: also save a timeline PNG (labels x time "
                                                          "heat map)."),
    device: str = device_option("Where audio inputs are embedded."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Predict label probabilities of every clip, to stdout or --out; --threshold adds the decided labels;
    --frames tags long recordings window by window (--events: as onset/offset events)."""
    setup_logging(quiet, verbose)
    from embedtag.artifacts import load_predictor
    from embedtag.errors import ParamError
    from embedtag.heads import Head, predict_files, predict_store
    from embedtag.heads import top_k as top_k_fn

    log.debug("predict with %s on %d input(s), device %s", head, len(inputs), device)
    h = load_predictor(head, device=device)
    if not frames and (events or plot is not None or window_s is not None or hop_s is not None):
        raise ParamError("--events, --plot, --window-s and --hop-s go with --frames")
    if frames:
        _predict_frames(h, inputs, out=out, fmt=fmt, window_s=window_s, hop_s=hop_s, events=events, plot=plot,
                        threshold=threshold, top_k=top_k, device=device, quiet=quiet)
        return
    if not isinstance(h, Head):  # a fine-tuned network (embedtag finetune) reads the audio itself
        if len(inputs) == 1 and _is_store(inputs[0]):
            raise ParamError(f"{head} is a fine-tuned network: give it audio files or folders, not a store")
        frame = h.predict_files([str(p) for p in inputs], progress=not quiet)
    else:
        if len(inputs) == 1 and _is_store(inputs[0]):
            frame = predict_store(h, inputs[0])
        else:
            frame = predict_files(h, [str(p) for p in inputs], device=device, progress=not quiet)
    thresholds = _parse_threshold(threshold, h)
    if thresholds is not None:
        from embedtag.heads.thresholds import labels_column

        vocab = list(frame.columns[1:])
        frame.insert(1, "labels", labels_column(frame[vocab].to_numpy(), vocab, thresholds,
                                                bool(getattr(h, "multi_label", True))))
    if top_k is not None:
        tags = top_k_fn(frame.drop(columns=["labels"], errors="ignore"), top_k)
        if thresholds is not None:
            for t, lab in zip(tags, frame["labels"]):
                t["labels"] = lab
        if fmt == CsvJson.json:
            data = json.dumps(tags, indent=1)
        else:
            import pandas as pd

            data = pd.DataFrame([{"fname": t["fname"], **({"labels": t["labels"]} if "labels" in t else {}),
                                  **{f"label_{i + 1}": x["label"] for i, x in enumerate(t["tags"])},
                                  **{f"probability_{i + 1}": x["probability"] for i, x in enumerate(t["tags"])}}
                                 for t in tags])
    elif fmt == CsvJson.json:
        data = frame.to_json(orient="records", indent=1)
    else:
        data = frame
    failures = frame.attrs.get("failures", [])  # read after the frame's copies above (pandas drops attrs)
    where = write_output(data, out)
    info(f"{len(frame)} clips -> {where}", quiet)
    if failures:  # the others were predicted; say which were not, and exit 3 as extract does
        from rich.console import Console
        from rich.markup import escape

        err = Console(stderr=True)
        for clip_id, reason in failures:
            err.print(f"  [red]failed[/] {escape(clip_id)}: {escape(reason)}", highlight=False, soft_wrap=True)
        raise typer.Exit(3)


def _predict_frames(h, inputs, *, out, fmt, window_s, hop_s, events, plot, threshold, top_k, device, quiet):
    import pandas as pd

    from embedtag.errors import ParamError
    from embedtag.frames import frames_to_events, make_scorer, plot_timeline, predict_frames
    from embedtag.heads.thresholds import labels_column
    from embedtag.inputs import audio_files

    if top_k is not None:
        raise ParamError("--top-k does not go with --frames (every window gets every score; --threshold or "
                         "--events say which labels are present)")
    if len(inputs) == 1 and _is_store(inputs[0]):
        raise ParamError(f"--frames needs audio: {inputs[0]} is an embedding store, which keeps one vector per clip")
    ids, paths = audio_files([str(p) for p in inputs])
    scorer = make_scorer(h, device=device)  # the backbone is loaded once for every file
    parts = []
    for clip_id, path in zip(ids, paths):
        f = predict_frames(scorer, path, window_s=window_s, hop_s=hop_s)
        f["clip_id"] = clip_id
        parts.append(f)
    frame = pd.concat(parts, ignore_index=True)
    multi = bool(getattr(h, "multi_label", True))
    thresholds = _parse_threshold(threshold if threshold is not None else "auto", h)
    if plot is not None:
        info(f"timeline -> {plot_timeline(frame, plot)}", quiet)
    if events:
        data = frames_to_events(frame, thresholds, median_filter=3, multi_label=multi)
        what = f"{len(data)} events in {len(ids)} clip(s)"
    else:
        data = frame
        if threshold is not None:
            vocab = list(scorer.labels)
            data.insert(3, "labels", labels_column(frame[vocab].to_numpy(), vocab, thresholds, multi))
        what = f"{len(frame)} windows of {len(ids)} clip(s)"
    where = write_output(data.to_json(orient="records", indent=1) if fmt == CsvJson.json else data, out)
    info(f"{what} -> {where}", quiet)


def _parse_threshold(value: str | None, predictor):
    """--threshold: None, "auto" (the predictor's thresholds_, else the default) or a number in [0, 1]."""
    from embedtag.errors import ParamError
    from embedtag.heads.thresholds import as_array

    if value is None:
        return None
    vocab = list(predictor.vocabulary)
    if value.strip().lower() == "auto":
        return as_array(getattr(predictor, "thresholds_", None), vocab)
    try:
        t = float(value)
    except ValueError:
        t = float("nan")
    if not 0 <= t <= 1:
        raise ParamError(f"--threshold {value!r}: expected auto or a number in [0, 1]")
    return as_array(t, vocab)


@app.command(epilog="Examples:\n\n  embedtag evaluate heads/office stores/office_test --labels labels.csv --out eval/"
                    "   # eval/report.html"
                    "\n\n  embedtag evaluate runs/office stores/office_test --format json")
def evaluate(
    head: Path = typer.Argument(..., help="Head directory (fit-head) or fine-tuned run (finetune)."),
    store: Path = typer.Argument(..., help="Embedding store of labelled clips."),
    labels: Path | None = typer.Option(None, help="fname,labels CSV or dataset folder (default: the store's "
                                                  "labels)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report directory: report.html, metrics.json "
                                                              "(per-class AP, confusion matrix), per_class.csv, "
                                                              "PNG plots."),
    rows: int = typer.Option(30, min=0, help="Per-class rows to print (worst first); 0 for all."),
    fmt: TableJson = format_option(TableJson.table, "table, or json: the metrics with one record per class."),
    device: str = device_option("Where a fine-tuned run reads the audio."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Score a head or a fine-tuned run on labelled clips: lwlrap (overall and per class), macro mAP, accuracy;
    --out writes a report: report.html with per-class AP, precision-recall curves, a confusion matrix
    (single-label data) and score distributions, metrics.json, per_class.csv. Warns when some evaluated clips were
    training clips (in-sample scores)."""
    setup_logging(quiet, verbose)
    from rich.console import Console
    from rich.table import Table

    from embedtag.artifacts import load_predictor
    from embedtag.heads import Head, evaluate_head

    h = load_predictor(head, device=device)  # a head, or a fine-tuned run (which scores the clips' audio)
    res = evaluate_head(h, store, labels, out=out)
    if out is not None:
        info(f"report: {res['report']['html']} (metrics.json, per_class.csv, "
             f"{len(res['report']['plots'])} PNG plots beside it)", quiet)
    if fmt == TableJson.json:
        summary = {k: v for k, v in res.items() if k not in ("per_class", "truth", "scores", "clip_ids", "report")}
        write_output(json.dumps({**summary, "per_class": res["per_class"].to_dict("records")}, indent=1,
                                default=str), "-")
        return
    console = Console()
    s = Table(title=f"evaluate {head} on {store} ({res['n_clips']} clips)", show_header=False,
              title_justify="left")
    s.add_row("lwlrap", f"{res['lwlrap']:.4f}")
    s.add_row("macro mAP", f"{res['macro_map']:.4f}")
    if "accuracy" in res:
        s.add_row("accuracy (top-1)", f"{res['accuracy']:.4f}")
    s.add_row("accuracy_multi @0.5", f"{res['accuracy_multi']:.4f}  (element-wise; inflated by negatives)")
    s.add_row("thresholds", res["thresholds"])
    s.add_row("precision / recall / F1 (micro)",
              f"{res['micro_precision']:.4f} / {res['micro_recall']:.4f} / {res['micro_f1']:.4f}")
    s.add_row("precision / recall / F1 (macro)",
              f"{res['macro_precision']:.4f} / {res['macro_recall']:.4f} / {res['macro_f1']:.4f}")
    console.print(s)
    if res["train_overlap"]:  # by clip id: held-out clips of the training store are not in-sample
        what = "head" if isinstance(h, Head) else "fine-tuned run"
        Console(stderr=True).print(
            f"[yellow]warning:[/] {res['train_overlap']} of {res['n_clips']} evaluated clips were used to train "
            f"this {what}: in-sample scores (`embedtag fit-head --folds 5` gives cross-validated ones)",
            highlight=False, soft_wrap=True)
    table = res["per_class"].sort_values("lwlrap")
    t = Table("label", "clips", "lwlrap", "weight", "AP", "threshold", "P", "R", "F1",
              title="per class (worst first)", title_justify="left")
    for r in (table if rows == 0 else table.head(rows)).itertuples():
        t.add_row(r.label, str(r.n_clips), f"{r.lwlrap:.3f}", f"{r.weight:.3f}", f"{r.average_precision:.3f}",
                  f"{r.threshold:.3f}", f"{r.precision:.3f}", f"{r.recall:.3f}", f"{r.f1:.3f}")
    console.print(t)

