"""`embedtag tag`: tag audio with the backbone's own AudioSet classes; no head, no training."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from embedtag.cli._app import app
from embedtag.cli._options import (
    OUT_STDOUT,
    QUIET,
    VERBOSE,
    Format,
    device_option,
    format_option,
    info,
    log,
    model_option,
    resolve_model,
    setup_logging,
    top_k_option,
    write_output,
)


@app.command(epilog="Examples:\n\n  embedtag tag recording.wav\n\n"
                    "  embedtag tag clips/ -k 3 --threshold 0.3 --format csv --out tags.csv\n\n"
                    "  embedtag tag long.wav --frames --window-s 2 --format json")
def tag(
    inputs: list[Path] = typer.Argument(..., help="Audio files or directories."),
    top_k: int = top_k_option(5, "The K best AudioSet classes per clip (or window)."),
    threshold: float | None = typer.Option(None, "--threshold", "-t", min=0.0, max=1.0,
                                           help="`labels` lists the classes scoring at least this (default 0.5)."),
    frames: bool = typer.Option(False, "--frames", help="Tag window by window (clip_id, start_s, end_s) instead "
                                                        "of whole clips."),
    window_s: float | None = typer.Option(None, "--window-s", help="With --frames: window length in seconds."),
    hop_s: float | None = typer.Option(None, "--hop-s", help="With --frames: hop between windows in seconds "
                                                             "(default: the window length)."),
    model: str | None = model_option(None, "Backbone whose AudioSet classifier tags the audio."),
    out: str = OUT_STDOUT,
    fmt: Format = format_option(Format.table, "table, csv (clip_id, labels, label_1, score_1, ...) or json."),
    device: str = device_option(),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Tag audio with the backbone's own AudioSet classes (no head, no training): the K best classes and those
    at or above --threshold, per clip or, with --frames, per window."""
    setup_logging(quiet, verbose)
    import numpy as np
    import pandas as pd

    from embedtag.errors import ParamError
    from embedtag.frames import make_scorer, predict_frames, tag_clip
    from embedtag.inputs import audio_files

    if not frames and (window_s is not None or hop_s is not None):
        raise ParamError("--window-s and --hop-s go with --frames")
    name = resolve_model(model)
    log.debug("tag %d input(s) with %s on %s", len(inputs), name, device)
    ids, paths = audio_files([str(p) for p in inputs])
    scorer = make_scorer(name, device=device)
    if not scorer.labels:
        raise ParamError(f"backbone {name} has no AudioSet classifier to tag with; train a head (embedtag fit-head)")
    if threshold is not None:
        scorer.thresholds = np.full(len(scorer.labels), float(threshold))
    records = []
    for clip_id, path in zip(ids, paths):
        if frames:
            f = predict_frames(scorer, path, window_s=window_s, hop_s=hop_s)
            S = f[scorer.labels].to_numpy()
            for i, row in enumerate(f.itertuples(index=False)):
                records.append({"clip_id": clip_id, "start_s": float(row.start_s), "end_s": float(row.end_s),
                                "labels": scorer.present(S[i]), "tags": scorer.top(S[i], top_k)})
        else:
            r = tag_clip(scorer, path, k=top_k)
            records.append({"clip_id": clip_id, "duration_s": r["duration_s"], "labels": r["labels"],
                            "tags": r["tags"]})
    what = f"{len(records)} {'windows' if frames else 'clips'} tagged with {name}"
    if fmt == Format.json:
        write_output(json.dumps(records, indent=1), out)
    elif fmt == Format.csv:
        rows = [{k: v for k, v in r.items() if k not in ("tags", "labels")} | {"labels": ",".join(r["labels"])}
                | {f"label_{i + 1}": t["label"] for i, t in enumerate(r["tags"])}
                | {f"score_{i + 1}": t["score"] for i, t in enumerate(r["tags"])} for r in records]
        write_output(pd.DataFrame(rows), out)
    else:
        from rich.console import Console
        from rich.table import Table

        cols = ["clip", "start_s", "end_s"] if frames else ["clip", "duration_s"]
        t = Table(*cols, "labels", f"top {top_k}", title=f"tag ({name})", title_justify="left")
        for r in records:
            when = [f"{r['start_s']:.2f}", f"{r['end_s']:.2f}"] if frames else [f"{r['duration_s']:.2f}"]
            t.add_row(r["clip_id"], *when, ", ".join(r["labels"]),
                      ", ".join(f"{x['label']} {x['score']:.2f}" for x in r["tags"]))
        if out in (None, "-"):
            Console().print(t)
        else:
            console = Console(record=True, width=160)
            with console.capture():
                console.print(t)
            write_output(console.export_text(), out)
    info(what, quiet)
