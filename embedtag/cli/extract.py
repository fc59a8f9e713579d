"""`embedtag extract` and `embedtag models`."""

from __future__ import annotations

from pathlib import Path

import typer

from embedtag.cli import app
from embedtag.embeddings.registry import DEFAULT_MODEL

EXIT_FAILURES = 3  # the run finished but some files were recorded as failed


@app.command(epilog="Examples:\n\n  embedtag extract ../shared/data/dcase2016_task2_office --model yamnet --out stores/office\n\n"
                    "  embedtag extract train_curated.csv --model panns-cnn14 --out stores/curated --batch-size 32\n\n"
                    "  embedtag extract clips/ --model yamnet-lite --out stores/clips --pooling meanmax")
def extract(
    src: list[Path] = typer.Argument(..., help="Audio directory (recursive), a dataset folder (labels.csv + audio/), "
                                               "a CSV with fname[,labels], or audio files."),
    out: Path = typer.Option(..., "--out", "-o", help="Embedding store directory (created, or resumed)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Backbone name; see `embedtag models`."),
    weights: Path | None = typer.Option(None, help="Weights file/dir to use instead of the mirror or cache."),
    labels: Path | None = typer.Option(None, help="fname,labels CSV attaching labels by clip_id."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", min=1, help="Windows per model call "
                                                                                  "(default: the backbone's)."),
    workers: int | None = typer.Option(None, min=1, help="Decoding threads (default: CPUs - 1, at most 4)."),
    pooling: str = typer.Option("mean", help="Pooling of window embeddings: mean, max or meanmax."),
    window_s: float = typer.Option(10.0, "--window-s", min=0.1, help="Clips longer than this are cut into windows."),
    scores: bool = typer.Option(True, "--scores/--no-scores", help="Keep the AudioSet class scores."),
    strict: bool = typer.Option(False, help="Stop at the first unreadable file (exit code 1)."),
    max_duration_s: float = typer.Option(3 * 3600.0, "--max-duration-s", help="Refuse files longer than this."),
    limit: int | None = typer.Option(None, help="Only the first N inputs (for a quick look)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Embed audio into an embedding store (Parquet shards + manifest); a rerun resumes where it stopped.

    Unreadable files are listed with their reason and the run goes on. Exit code: 0 all stored,
    3 finished with failures recorded, 1 error (or the first bad file with --strict).
    """
    from embedtag.embeddings.pipeline import extract as run_extract

    summary = run_extract([str(s) for s in src] if len(src) > 1 else str(src[0]), out, model=model,
                          labels=labels, weights=weights, device=device, batch_size=batch_size, workers=workers,
                          pooling=pooling, window_s=window_s, scores=scores, strict=strict,
                          max_duration_s=max_duration_s, limit=limit, progress=not quiet)
    print_summary(summary)
    if summary.n_failed:
        raise typer.Exit(EXIT_FAILURES)


def print_summary(summary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"extract → {summary.store}", show_header=False, title_justify="left")
    t.add_row("backbone", f"{summary.backbone} on {summary.device}")
    t.add_row("clips stored", f"{summary.n_stored}  (skipped, already done: {summary.n_skipped})")
    t.add_row("audio", f"{summary.audio_s / 3600:.3f} h")
    t.add_row("failures", str(summary.n_failed))
    t.add_row("time", f"{summary.elapsed_s:.1f} s")
    t.add_row("throughput", f"{summary.clips_per_s:.1f} clips/s, {summary.realtime_factor:.0f}x real time")
    console.print(t)
    for clip_id, reason in summary.failures[:20]:
        console.print(f"  [red]failed[/] {clip_id}: {reason}", highlight=False)
    if len(summary.failures) > 20:
        console.print(f"  ... and {len(summary.failures) - 20} more (see the store's errors/ table)")


@app.command()
def models() -> None:
    """List the backbones: embedding dim, sample rate, classes, and whether their weights are present."""
    from rich.console import Console
    from rich.table import Table

    from embedtag.embeddings.registry import list_backbones
    from embedtag.embeddings.weights import candidates, find

    t = Table("name", "dim", "rate", "classes", "weights", "description")
    missing = []
    for spec in list_backbones():
        found = find(spec.weights)
        if not found:
            missing.append(spec)
        t.add_row(spec.name, str(spec.embedding_dim), f"{spec.sample_rate // 1000} kHz", str(spec.n_classes),
                  "[green]present[/]" if found else "[yellow]missing[/]", spec.description)
    console = Console()
    console.print(t)
    for spec in missing:
        console.print(f"[yellow]{spec.name}[/]: {spec.weights.family}/{spec.weights.relpath} is fetched on first use "
                      f"into {candidates(spec.weights)[-1].parent}, or put it there (or under EMBEDTAG_WEIGHTS_DIR)",
                      highlight=False)


@app.command()
def info(store: Path = typer.Argument(..., help="An embedding store directory."),
         errors: bool = typer.Option(False, "--errors", help="List every failed file with its reason.")) -> None:
    """Describe an embedding store: backbone, dimension, pooling, clips, hours of audio, labels, failures."""
    from rich.console import Console
    from rich.table import Table

    from embedtag.store import open_store

    s = open_store(store)
    m = s.manifest
    df = s.to_pandas(["clip_id", "duration_s", "labels"])
    errs = s.errors()
    labelled = int(df["labels"].map(lambda v: v is not None and len(v) > 0).sum()) if len(df) else 0
    t = Table(title=str(store), show_header=False, title_justify="left")
    t.add_row("backbone", f"{m.backbone}  (weights sha256 {str(m.weights_sha256)[:12]}…)")
    t.add_row("embedding", f"{m.embedding_dim}-d, pooling {m.pooling}, window {m.window_s:g} s, {m.sample_rate} Hz")
    t.add_row("clips", f"{len(df)} ({labelled} labelled), {df['duration_s'].sum() / 3600:.3f} h of audio")
    t.add_row("AudioSet scores", f"{len(m.class_names)} classes" if m.has_scores else "not kept")
    t.add_row("failed files", str(len(errs)))
    t.add_row("written by", f"embedtag {m.embedtag_version} at {m.created_at}")
    console = Console()
    console.print(t)
    if errors:
        for row in errs.itertuples():
            console.print(f"  [red]{row.clip_id}[/]: {row.reason}", highlight=False)
