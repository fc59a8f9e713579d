"""`embedtag profile` and `embedtag benchmark`: thin wrappers over embedtag.profile and embedtag.benchmark."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from embedtag.cli._app import app
from embedtag.cli._options import (
    BACKBONE_ALIAS,
    JSON_ALIAS,
    QUIET,
    VERBOSE,
    TableJson,
    device_option,
    format_option,
    model_option,
    resolve_model,
    setup_logging,
    write_output,
)


def print_profile(profile, console=None, max_flags: int = 30, max_labels: int = 40) -> None:
    """Rich tables of a :class:`~embedtag.profile.DatasetProfile`."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    p = profile
    st = p.duration_s_stats or {}
    t = Table(title=f"{p.root} ({p.layout})", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    rows = [("clips", f"{p.n_clips} ({p.n_readable} readable, {p.n_labelled} labelled)"),
            ("labels", f"{p.n_labels} ({'multi-label' if p.multi_label else 'single-label'})"),
            ("subsets", ", ".join(f"{k} {v}" for k, v in p.subsets.items())),
            ("audio", f"{p.total_duration_s / 3600:.2f} h"),
            ("duration (s)", "  ".join(f"{k} {v:.2f}" for k, v in st.items()) if st else "–"),
            ("sample rates (Hz)", ", ".join(f"{k}: {v}" for k, v in p.sample_rates.items()) or "–"),
            ("channels", ", ".join(f"{k}: {v}" for k, v in p.channels.items()) or "–"),
            ("formats", ", ".join(f"{k}: {v}" for k, v in p.formats.items()) or "–"),
            ("labels per clip", ", ".join(f"{k}: {v}" for k, v in p.labels_per_clip.items())),
            ("flagged", ", ".join(f"{k} {v}" for k, v in p.flag_counts().items())
             + ("" if p.levels_checked else " (levels not checked)"))]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    hist = p.duration_histogram
    if hist.get("counts"):
        h = Table(title="duration histogram")
        h.add_column("duration (s)")
        h.add_column("clips", justify="right")
        h.add_column("")
        top = max(hist["counts"]) or 1
        for a, b, c in zip(hist["edges_s"][:-1], hist["edges_s"][1:], hist["counts"]):
            h.add_row(f"{a:.2f} – {b:.2f}", str(c), "█" * round(30 * c / top))
        console.print(h)
    if p.label_counts:
        subsets = list(p.label_counts)
        lt = Table(title="label frequencies" + (f" (first {max_labels} of {p.n_labels})"
                                                if p.n_labels > max_labels else ""))
        lt.add_column("label")
        for s in subsets:
            lt.add_column(s, justify="right")
        for lab in list(p.label_counts[subsets[0]])[:max_labels]:
            lt.add_row(lab, *(str(p.label_counts[s].get(lab, 0)) for s in subsets))
        console.print(lt)
    if p.flags:
        ft = Table(title=f"flagged clips ({len(p.flags)})")
        for c in ("clip", "flag", "detail"):
            ft.add_column(c)
        for f in p.flags[:max_flags]:
            ft.add_row(f.clip_id, f.kind, f.detail)
        console.print(ft)
        if len(p.flags) > max_flags:
            console.print(f"... and {len(p.flags) - max_flags} more (use --format json for all)")


@app.command("profile", epilog="Examples:\n\n  embedtag profile ../shared/data/dcase2016_task2_office\n\n"
                               "  embedtag profile FSDKaggle2019/ --no-levels --format json > profile.json")
def profile_cmd(
    data: Path = typer.Argument(..., help="Dataset folder (labels.csv + audio/, FSDKaggle2019, ESC-50, folder per "
                                          "class), a fname,labels CSV, or a folder of audio files."),
    levels: bool = typer.Option(True, "--levels/--no-levels", help="Decode clips to check silence and clipping "
                                                                   "(--no-levels: headers only, faster)."),
    silence_dbfs: float = typer.Option(-60.0, "--silence-dbfs", help="Clips with RMS below this are silent."),
    clip_level: float = typer.Option(0.999, "--clip-level", help="|sample| at or above this is clipped."),
    clipped_fraction: float = typer.Option(0.001, "--clipped-fraction",
                                           help="Share of clipped samples that flags a clip."),
    min_duration_s: float = typer.Option(0.25, "--min-duration-s", help="Clips shorter than this are too short."),
    workers: int = typer.Option(2, min=1, help="Decoding threads."),
    fmt: TableJson = format_option(TableJson.table, "table, or json (every flagged clip)."),
    as_json: bool = JSON_ALIAS,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Profile a dataset: clips, durations, sample rates, channels, labels, flagged clips."""
    setup_logging(quiet, verbose)
    from embedtag.profile import profile_dataset

    as_json = as_json or fmt == TableJson.json
    p = profile_dataset(data, levels=levels, silence_dbfs=silence_dbfs, clip_level=clip_level,
                        clipped_fraction=clipped_fraction, min_duration_s=min_duration_s, workers=workers,
                        progress=not quiet and not as_json and sys.stderr.isatty())
    if as_json:
        write_output(json.dumps(p.as_dict(), indent=2), "-")
    else:
        print_profile(p)


@app.command("benchmark", epilog="Examples:\n\n  embedtag benchmark ../shared/data/dcase2016_task2_office "
                                 "--out reports/office"
                                 "\n\n  embedtag benchmark fsdkaggle2019 --heads logreg,mlp --folds 5 --out reports/fsd"
                                 "\n\n  embedtag benchmark ESC-50-master --model panns-cnn14 --out reports/esc50")
def benchmark_cmd(
    data: str = typer.Argument(..., help="Dataset folder (any layout `embedtag profile` reads) or a known dataset "
                                         "name: fsdkaggle2019, esc50 (looked up under $EMBEDTAG_DATA)."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder: report.md, report.html, PNGs, results.json, "
                                                      "store/."),
    model: str | None = model_option(),
    backbone: str | None = BACKBONE_ALIAS,
    heads: str = typer.Option("logreg,mlp,auto", help="Comma-separated heads: logreg, mlp, lightgbm, knn, prior, "
                                                       "auto (picks among the others by inner CV)."),
    folds: int = typer.Option(5, min=2, help="Cross-validation folds (a dataset's own folds win, e.g. ESC-50)."),
    finetune: bool = typer.Option(False, "--finetune", help="Also fine-tune a CNN end to end (embedtag.finetune; "
                                                            "resumed from OUT/finetune when interrupted)."),
    finetune_epochs: int | None = typer.Option(None, "--finetune-epochs", min=1,
                                               help="Fine-tuning epochs per stage (default: embedtag.finetune's)."),
    seed: int = typer.Option(0, min=0, help="Seed of folds and heads."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Extraction batch size (default: "
                                                                            "backbone's)."),
    device: str = device_option(),
    levels: bool = typer.Option(True, "--levels/--no-levels", help="Profile: decode clips for silence/clipping."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Run profile, extract, cross-validated heads (each noisy-label strategy), retrieval and throughput on a
    dataset, and write a report beside published references."""
    setup_logging(quiet, verbose)
    from rich.console import Console
    from rich.table import Table

    from embedtag.benchmark import run_benchmark

    backbone = resolve_model(model, backbone)
    # rebuilt from the parsed options (not sys.argv), so the report shows every setting, defaults included
    command = " ".join(["embedtag benchmark", shlex.quote(str(data)), "--out", shlex.quote(str(out)), "--model",
                        backbone, "--heads", heads, "--folds", str(folds), "--seed", str(seed)]
                       + (["--finetune"] if finetune else [])
                       + (["--finetune-epochs", str(finetune_epochs)] if finetune_epochs else [])
                       + ([] if levels else ["--no-levels"]))
    r = run_benchmark(data, out, backbone=backbone, heads=heads, folds=folds, finetune=finetune,
                      finetune_epochs=finetune_epochs, seed=seed,
                      batch_size=batch_size, device=device, levels=levels, progress=not quiet, command=command)
    console = Console()
    t = Table(title=f"benchmark: {r['dataset']['name']} with {backbone}")
    for c in ("stage", "result"):
        t.add_column(c)
    for stage in ("profile", "extract", "heads", "finetune", "retrieval"):
        v = r.get(stage) or {}
        if v.get("status") != "ok":
            t.add_row(stage, f"[yellow]not run[/]: {v.get('reason')}")
        elif stage == "heads":
            b = v["best"]
            each: dict = {}  # every head's best strategy, so auto shows beside the single heads
            for row in v["rows"]:
                each[row["head"]] = max(each.get(row["head"], 0.0), row["lwlrap"])
            t.add_row(stage, f"best {b['head']} / {b['strategy']}: lwlrap {b['lwlrap']:.4f}"
                      + (f", accuracy {b['accuracy']:.4f}" if b.get("accuracy") is not None else "")
                      + ("; " + ", ".join(f"{h} {x:.4f}" for h, x in each.items()) if len(each) > 1 else ""))
        elif stage == "extract":
            t.add_row(stage, f"{v['n_stored']} stored, {v['n_failed']} failed, {v['clips_per_s']:.1f} clips/s")
        elif stage == "retrieval":
            t.add_row(stage, ", ".join(f"P@{k} {p:.3f}" for k, p in zip(v["k"], v["precision_at_k"])))
        elif stage == "profile":
            flagged = ", ".join(f"{k} {n}" for k, n in v["flag_counts"].items() if n) or "none"
            t.add_row(stage, f"{v['n_clips']} clips, flagged: {flagged}")
        elif stage == "finetune":
            cv = v.get("cv_lwlrap")
            t.add_row(stage, f"{v['backbone']}: lwlrap {cv:.4f}" if cv is not None else "ran, nothing scored")
        else:
            t.add_row(stage, "ok")
    console.print(t)
    console.print(f"report: {r['report']['html']} and {r['report']['markdown']}")
    if r["extract"].get("status") != "ok":
        # the report is written (it says why), but a run without embeddings is not a benchmark
        Console(stderr=True).print(f"[bold red]error:[/] {r['extract'].get('reason')}", highlight=False,
                                   soft_wrap=True)
        raise typer.Exit(1)
