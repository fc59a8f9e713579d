"""`embedtag extract` and `embedtag models`."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer

from embedtag.cli._app import app
from embedtag.cli._options import (
    QUIET,
    VERBOSE,
    Format,
    TableJson,
    device_option,
    format_option,
    log,
    model_option,
    resolve_model,
    setup_logging,
    write_output,
)

EXIT_FAILURES = 3  # the run finished but some of its inputs are not in the store (recorded as failed)


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class Pooling(str, Enum):
    mean = "mean"
    max = "max"
    meanmax = "meanmax"


@app.command(epilog="Examples:\n\n  embedtag extract ../shared/data/dcase2016_task2_office --out stores/office\n\n"
                    "  embedtag extract train_curated.csv --model panns-cnn14 --out stores/curated --batch-size 32\n\n"
                    "  embedtag extract clips/ -m yamnet-lite --out stores/clips --pooling meanmax -q\n\n"
                    "  embedtag extract audioset.csv --out stores/as --engine ray --ray-address HEAD:6379 "
                    "--gpus-per-actor 1")
def extract(
    src: list[Path] = typer.Argument(..., help="Audio directory (recursive), a dataset folder (labels.csv + audio/), "
                                               "a CSV with fname[,labels], or audio files."),
    out: Path = typer.Option(..., "--out", "-o", help="Embedding store directory (created, or resumed)."),
    model: str | None = model_option(),
    weights: Path | None = typer.Option(None, help="Weights file/dir to use instead of the mirror or cache."),
    labels: Path | None = typer.Option(None, help="fname,labels CSV attaching labels by clip_id."),
    device: str = device_option(),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", min=1, help="Windows per model call "
                                                                                  "(default: the backbone's)."),
    workers: int | None = typer.Option(None, min=1, help="Decoding threads (default: CPUs - 1, at most 4)."),
    pooling: Pooling = typer.Option(Pooling.mean, help="Pooling of window embeddings."),
    window_s: float = typer.Option(10.0, "--window-s", min=0.1, help="Clips longer than this are cut into windows."),
    scores: bool = typer.Option(True, "--scores/--no-scores", help="Keep the AudioSet class scores."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable file (exit code 1)."),
    max_duration_s: float = typer.Option(3 * 3600.0, "--max-duration-s", help="Refuse files longer than this."),
    limit: int | None = typer.Option(None, help="Only the first N inputs (for a quick look)."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root",
                                            help="Accept CSV rows naming files outside the CSV's dataset folder."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
    engine: Engine = typer.Option(Engine.local, help="local (this process) or ray (a Ray cluster; needs "
                                                     "embedtag's ray extra). Same store either way."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Ray: auto (join `ray start`'s cluster, "
                                                                       "else start a local one) or HOST:PORT."),
    actors: int | None = typer.Option(None, min=1, help="Ray: Model actors (default: GPUs / --gpus-per-actor, "
                                                        "else one per 4 CPUs)."),
    gpus_per_actor: float | None = typer.Option(None, "--gpus-per-actor", min=0, help="Ray: GPUs per actor "
                                                                                      "(> 0: the model runs on CUDA)."),
    cpus_per_decoder: float | None = typer.Option(None, "--cpus-per-decoder", min=0.01,
                                                  help="Ray: CPUs per decoding task (default 1)."),
) -> None:
    """Embed audio into an embedding store (Parquet shards + manifest); a rerun resumes where it stopped.

    Unreadable files are listed with their reason and the run goes on; a rerun tries them again. Labels
    (--labels, or a dataset's labels.csv) are attached to clips stored earlier too. A second extract into the
    same store waits up to 10 s for the first one, then refuses. Exit code: 0 every input is stored,
    3 finished but some inputs are still not stored (failed now or earlier), 1 error (or the first bad file
    with --strict), 2 a bad option.
    """
    setup_logging(quiet, verbose)
    from embedtag.embeddings.pipeline import extract as run_extract

    model = resolve_model(model)
    log.debug("extract %s -> %s with %s on %s", [str(s) for s in src], out, model, device)
    summary = run_extract([str(s) for s in src] if len(src) > 1 else str(src[0]), out, model=model,
                          labels=labels, weights=weights, device=device, batch_size=batch_size, workers=workers,
                          pooling=pooling.value, window_s=window_s, scores=scores, strict=strict,
                          max_duration_s=max_duration_s, limit=limit, allow_outside_root=allow_outside_root,
                          progress=not quiet, engine=engine.value, ray_address=ray_address, actors=actors,
                          gpus_per_actor=gpus_per_actor, cpus_per_decoder=cpus_per_decoder)
    print_summary(summary, plain=quiet)
    if summary.n_unstored:
        raise typer.Exit(EXIT_FAILURES)


def summary_rows(summary) -> list[tuple[str, str]]:
    """The summary of an extract run as (field, value) rows."""
    rows = [("backbone", f"{summary.backbone} on {summary.device}"),
            ("clips stored", f"{summary.n_stored}  (skipped, already done: {summary.n_skipped})"),
            ("audio", f"{summary.audio_s / 3600:.3f} h"),
            ("failures", f"{summary.n_failed}" + (f"  (retried from earlier runs: {summary.n_retried})"
                                                   if summary.n_retried else ""))]
    if summary.n_unstored:
        rows.append(("not stored", f"{summary.n_unstored} of {summary.n_inputs} inputs (rerun to try them again)"))
    if summary.n_relabelled:
        rows.append(("labels", f"{summary.n_relabelled} stored clips got new labels"))
    if summary.ray is not None:
        rows.append(("ray", summary.ray.describe()))
    rows.append(("time", f"{summary.elapsed_s:.1f} s"))
    rows.append(("throughput", f"{summary.clips_per_s:.1f} clips/s, {summary.realtime_factor:.0f}x real time"))
    return rows


def print_summary(summary, plain: bool = False) -> None:
    """The run's summary on stdout: a rich table, or with ``plain`` (``-q``) the same rows as ``field: value``
    lines (rich's import alone costs a job of a few seconds ~0.1 s)."""
    failed = [f"{clip_id}: {reason}" for clip_id, reason in summary.failures[:20]]
    more = (f"  ... and {len(summary.failures) - 20} more (see the store's errors/ table)"
            if len(summary.failures) > 20 else None)
    if plain:
        lines = [f"extract → {summary.store}", *(f"  {k}: {v}" for k, v in summary_rows(summary)),
                 *(f"  failed {f}" for f in failed), *([more] if more else [])]
        sys.stdout.write("\n".join(lines) + "\n")
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    t = Table(title=f"extract → {summary.store}", show_header=False, title_justify="left")
    for k, v in summary_rows(summary):
        t.add_row(k, v)
    console.print(t)
    for f in failed:
        console.print(f"  [red]failed[/] {escape(f)}", highlight=False)
    if more:
        console.print(escape(more), highlight=False)


@app.command(epilog="Examples:\n\n  embedtag models\n\n  embedtag models --format json")
def models(fmt: Format = format_option(Format.table, "table, json or csv: one row per backbone."),
           quiet: bool = QUIET, verbose: bool = VERBOSE) -> None:
    """List the backbones: embedding dim, sample rate, classes, and whether their weights are present."""
    setup_logging(quiet, verbose)
    from embedtag.embeddings import registry
    from embedtag.embeddings.registry import list_backbones
    from embedtag.embeddings.weights import candidates, find

    default = registry.DEFAULT_MODEL
    rows = []
    for spec in list_backbones():
        rows.append({"name": spec.name, "default": spec.name == default, "embedding_dim": spec.embedding_dim,
                     "sample_rate": spec.sample_rate, "n_classes": spec.n_classes,
                     "weights_present": bool(find(spec.weights)), "description": spec.description})
    if fmt != Format.table:
        write_output(_records(rows, fmt), "-")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("name", "dim", "rate", "classes", "weights", "description", caption="* the default of --model")
    for r in rows:
        t.add_row(r["name"] + (" *" if r["default"] else ""), str(r["embedding_dim"]),
                  f"{r['sample_rate'] // 1000} kHz", str(r["n_classes"]),
                  "[green]present[/]" if r["weights_present"] else "[yellow]missing[/]", r["description"])
    console = Console()
    console.print(t)
    if quiet:
        return
    for spec in list_backbones():
        if not find(spec.weights):
            console.print(f"[yellow]{spec.name}[/]: {spec.weights.family}/{spec.weights.relpath} is fetched on first "
                          f"use into {candidates(spec.weights)[-1].parent}, or put it there (or under "
                          "EMBEDTAG_WEIGHTS_DIR)", highlight=False)


def _records(rows: list[dict], fmt) -> str:
    """A list of flat dicts as JSON (a list of objects) or CSV (one row each)."""
    import json

    if fmt == Format.json:
        return json.dumps(rows, indent=1)
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


@app.command(epilog="Examples:\n\n  embedtag info stores/office\n\n  embedtag info stores/office --errors\n\n"
                    "  embedtag info stores/office --format json")
def info(store: Path = typer.Argument(..., help="An embedding store directory."),
         errors: bool = typer.Option(False, "--errors", help="List every failed file with its reason."),
         fmt: TableJson = format_option(TableJson.table, "table, or json (the manifest and counts)."),
         quiet: bool = QUIET, verbose: bool = VERBOSE) -> None:
    """Describe an embedding store: backbone, dimension, pooling, clips, hours of audio, labels, failures.

    Counts are of distinct clips (a clip stored twice counts once); "failed files" are those still not
    stored (a rerun of extract tries them again)."""
    setup_logging(quiet, verbose)
    from rich.console import Console
    from rich.table import Table

    from embedtag.store import QUARANTINE, open_store

    s = open_store(store)
    m = s.manifest
    df = s.to_pandas(["clip_id", "duration_s", "labels"])
    errs = s.errors()
    n_rows = s.n_rows()
    labelled = int(df["labels"].map(lambda v: v is not None and len(v) > 0).sum()) if len(df) else 0
    if fmt == TableJson.json:
        import json
        from dataclasses import asdict

        manifest = {k: v for k, v in asdict(m).items() if k != "class_names"}
        write_output(json.dumps({"store": str(store), "manifest": manifest, "n_clips": len(df),
                                 "n_labelled": labelled, "audio_s": float(df["duration_s"].sum()),
                                 "n_failed": len(errs),
                                 **({"errors": errs[["clip_id", "reason"]].to_dict("records")} if errors else {})},
                                indent=1, default=str), "-")
        return
    t = Table(title=str(store), show_header=False, title_justify="left")
    t.add_row("backbone", f"{m.backbone}  (weights sha256 {str(m.weights_sha256)[:12]}…)")
    t.add_row("embedding", f"{m.embedding_dim}-d, pooling {m.pooling}, window {m.window_s:g} s, {m.sample_rate} Hz")
    t.add_row("clips", f"{len(df)} ({labelled} labelled), {df['duration_s'].sum() / 3600:.3f} h of audio")
    if n_rows > len(df):
        t.add_row("duplicates", f"{n_rows - len(df)} rows stored twice (readers keep the last one)")
    t.add_row("AudioSet scores", f"{len(m.class_names)} classes" if m.has_scores else "not kept")
    t.add_row("failed files", f"{len(errs)} not stored" + ("  (rerun extract to try them again)" if len(errs) else ""))
    quarantined = list((s.path / QUARANTINE).glob("*")) if (s.path / QUARANTINE).is_dir() else []
    if quarantined:
        t.add_row("quarantined", f"{len(quarantined)} bad files in {s.path / QUARANTINE}")
    t.add_row("written by", f"embedtag {m.embedtag_version} at {m.created_at}")
    console = Console()
    console.print(t)
    if errors:
        for row in errs.itertuples():
            console.print(f"  [red]{row.clip_id}[/]: {row.reason}", highlight=False)
