"""`embedtag index build|add|evaluate` and `embedtag search`: similar-sound search over an embedding store."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from embedtag.cli._app import app
from embedtag.cli._options import (
    JSON_ALIAS,
    OUT_STDOUT,
    QUIET,
    VERBOSE,
    Format,
    TableJson,
    device_option,
    format_option,
    info,
    log,
    setup_logging,
    top_k_option,
    write_output,
)

index_app = typer.Typer(help="Build, extend and evaluate similar-sound search indexes (FAISS).",
                        no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(index_app, name="index")


class Kind(str, Enum):
    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivfpq = "ivfpq"


class Metric(str, Enum):
    cosine = "cosine"
    l2 = "l2"


class Preprocess(str, Enum):
    none = "none"
    center = "center"
    whiten = "whiten"


@index_app.command("build", epilog="Examples:\n\n  embedtag index build stores/office --out indexes/office "
                                   "--preprocess center\n\n  embedtag index build stores/big --out indexes/big "
                                   "--kind ivfpq -q")
def build(
    store: Path = typer.Argument(..., help="Embedding store directory (from `embedtag extract`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory to write."),
    kind: Kind = typer.Option(Kind.auto, help="auto: exact (flat) for small stores, compressed ivfpq for large."),
    metric: Metric = typer.Option(Metric.cosine, help="cosine (L2-normalise + inner product) or l2."),
    preprocess: Preprocess = typer.Option(Preprocess.none, help="none, center (subtract the store mean) or "
                                                                 "whiten (PCA whitening fitted on the store)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index at --out."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Build a similarity index over every clip of STORE and save it to --out."""
    setup_logging(quiet, verbose)
    from embedtag import artifacts
    from embedtag.search import build_index

    if out.exists():  # refuse before the build: another kind of artifact, or an index without --overwrite
        artifacts.prepare_output(out, artifacts.INDEX, overwrite=overwrite)
    index = build_index(store, kind=kind.value, metric=metric.value, preprocess=preprocess.value,
                        progress=not quiet)
    index.save(out, overwrite=overwrite)
    m = index.manifest
    info(f"indexed {len(index)} {m.backbone} clips ({m.embedding_dim}-d) into {out}: kind={m.kind} "
               f"({m.factory}), metric={m.metric}, preprocess={m.preprocess['kind']}, {m.build_time_s:.1f} s", quiet)


@index_app.command("add", epilog="Example:\n\n  embedtag index add indexes/office stores/office_new")
def add(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="Index directory."),
    store: Path = typer.Argument(..., help="Embedding store with new clips (same backbone and settings)."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Add the clips of STORE that INDEX does not hold yet, without a rebuild.

    Safe to run concurrently: writers of one index take turns, and an interrupted add leaves the index as it was."""
    setup_logging(quiet, verbose)
    from embedtag.search import add_to_index

    index, n = add_to_index(index_dir, store, progress=not quiet)
    info(f"added {n} clips to {index_dir} (now {len(index)})", quiet)


@index_app.command("evaluate", epilog="Examples:\n\n  embedtag index evaluate indexes/office -k 5\n\n"
                                      "  embedtag index evaluate indexes/big --labels labels.csv --format json")
def evaluate(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="Index directory."),
    labels: Path | None = typer.Option(None, help="fname,labels CSV (default: the labels stored with the clips)."),
    k: int = top_k_option(5, "Neighbours per query."),
    store: Path | None = typer.Option(None, help="The store the index was built from, for recall@k of "
                                                 "approximate indexes (default: the path in the manifest)."),
    max_queries: int = typer.Option(2000, "--max-queries", min=1, help="Evaluate on at most this many clips "
                                                                       "(random)."),
    fmt: TableJson = format_option(TableJson.table, "table, or json: every metric."),
    as_json: bool = JSON_ALIAS,
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Leave-one-out retrieval quality: precision@k and mAP@k from labels; recall@k against exact search."""
    setup_logging(quiet, verbose)
    from embedtag.search import SimilarityIndex, evaluate_index
    from embedtag.store import open_store

    index = SimilarityIndex.load(index_dir)
    ev = evaluate_index(index, labels, k=k, store=open_store(store) if store else None, max_queries=max_queries)
    if as_json or fmt == TableJson.json:
        write_output(json.dumps(ev.to_dict(), indent=2), "-")
        return
    from rich.console import Console
    from rich.table import Table

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    t = Table(title=f"{index_dir} ({index.manifest.kind}, {len(index)} clips)", show_header=False,
              title_justify="left")
    t.add_row("queries", str(ev.n_queries))
    t.add_row(f"precision@{ev.k}", fmt(ev.precision_at_k))
    t.add_row(f"mAP@{ev.k}", fmt(ev.map_at_k))
    t.add_row("chance precision", fmt(ev.chance_precision))
    t.add_row(f"recall@{ev.k} vs exact", fmt(ev.recall_at_k) if ev.kind != "flat" else "1 (exact index)")
    console = Console()
    console.print(t)
    if ev.note and not quiet:
        console.print(f"note: {ev.note}", highlight=False)


@app.command("search", epilog="Examples:\n\n  embedtag search indexes/office cough_01.wav -k 5\n\n"
                              "  embedtag search indexes/office clearthroat002.wav new_clips/ --format json\n\n"
                              "  embedtag search indexes/office cough_01.wav --format csv --out neighbours.csv")
def search(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="Index directory (from `embedtag index build`)."),
    queries: list[str] = typer.Argument(..., metavar="QUERY...", help="Stored clip ids, audio files or "
                                                                      "directories of audio files."),
    k: int = top_k_option(10, "Neighbours per query."),
    fmt: Format = format_option(Format.table, "table; json: a list with, per query, {query, query_type, "
                                              "results: [{rank, score, clip_id, path, labels}]}; csv: one row per "
                                              "neighbour."),
    out: str = OUT_STDOUT,
    device: str = device_option("Where audio queries are embedded."),
    quiet: bool = QUIET,
    verbose: bool = VERBOSE,
) -> None:
    """Find the indexed clips nearest to each QUERY (a stored clip id skips itself in its results)."""
    setup_logging(quiet, verbose)
    from embedtag.search import SimilarityIndex

    index = SimilarityIndex.load(index_dir)
    results = index.search_named(queries, k, device=device, progress=False)
    log.debug("%d queries against %s (%d clips, %s)", len(results), index_dir, len(index), index.manifest.kind)
    if fmt == Format.json:
        write_output(json.dumps([r.to_dict() for r in results], indent=1), out)
        return
    if fmt == Format.csv:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["query", "rank", "score", "clip_id", "path", "labels"])
        for res in results:
            for r in res.neighbours:
                w.writerow([res.query, r["rank"], f"{r['score']:.6g}", r["clip_id"], r["path"],
                            ",".join(r["labels"] or [])])
        write_output(buf.getvalue(), out)
        return
    from rich.console import Console
    from rich.table import Table

    score_name = "cosine" if index.manifest.metric == "cosine" else "distance"
    import io

    to_file = str(out) != "-"
    console = Console(file=io.StringIO(), width=160) if to_file else Console()
    for res in results:
        t = Table("rank", score_name, "clip id", "path", "labels", title=f"nearest to {res.query}",
                  title_justify="left")
        for r in res.neighbours:
            t.add_row(str(r["rank"]), f"{r['score']:.4f}", r["clip_id"], r["path"], ", ".join(r["labels"] or []))
        console.print(t)
    if to_file:
        write_output(console.file.getvalue(), out)
