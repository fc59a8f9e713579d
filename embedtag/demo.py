"""`make demo`: the main job end to end on real audio.

    python -m embedtag.demo [--data DIR] [--model efficientat-mn04] [--out demo_out] [--shared ../shared]

With ``--data`` it embeds that folder (audio files, or a dataset folder with labels.csv + audio/), fetching the
official weights if they are not in ``EMBEDTAG_WEIGHTS_DIR`` or the cache. Without it, it embeds every dataset in
``SHARED/data`` with the real weights in ``SHARED/models``. Then, where labels exist, it cross-validates a head
and runs a similar-sound query on the first labelled store.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _datasets(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "labels.csv").is_file() and (p / "audio").is_dir())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default="", help="audio folder or dataset folder (default: every dataset in SHARED/data)")
    from embedtag.embeddings.registry import DEFAULT_MODEL

    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"backbone (default {DEFAULT_MODEL})")
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from rich.console import Console

    console = Console()
    shared = Path(args.shared)
    if args.data:
        inputs = [Path(args.data)]
        if not inputs[0].exists():
            console.print(f"[red]error:[/] DATA={args.data} does not exist")
            return 2
    elif (shared / "data").is_dir():
        inputs = _datasets(shared / "data")
        if not os.environ.get("EMBEDTAG_WEIGHTS_DIR") and (shared / "models").is_dir():
            os.environ["EMBEDTAG_WEIGHTS_DIR"] = str(shared / "models")
    else:
        console.print(
            f"[yellow]No audio to run on:[/] {shared} (the shared assets folder) is not beside this checkout.\n"
            "Run [bold]make demo DATA=/path/to/audio[/] with a folder of audio files (WAV/FLAC/OGG/MP3), or a "
            "dataset folder holding labels.csv (fname,labels) and audio/.\n"
            f"The {args.model} weights are then downloaded once into ~/.cache/embedtag/weights "
            "(or set EMBEDTAG_WEIGHTS_DIR to a folder that already holds them; EMBEDTAG_OFFLINE=1 forbids downloads).")
        return 2

    from embedtag.cli.extract import print_summary
    from embedtag.embeddings.pipeline import extract
    from embedtag.embeddings.registry import load_backbone
    from embedtag.errors import EmbedtagError

    out = Path(args.out)
    try:
        backbone = load_backbone(args.model)
    except EmbedtagError as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    console.rule(f"[bold]1. extract[/] {len(inputs)} input(s) with {backbone.name} ({backbone.embedding_dim}-d)")
    stores, total_clips, total_s, total_audio = [], 0, 0.0, 0.0
    for src in inputs:
        summary = extract(src, out / "stores" / src.name, model=backbone, progress=True)
        print_summary(summary)
        stores.append(Path(summary.store))
        total_clips += summary.n_stored + summary.n_skipped
        total_s += summary.elapsed_s
        total_audio += summary.audio_s
    console.print(f"[bold green]{total_clips} clips[/] in {len(stores)} store(s) under {out / 'stores'}; "
                  f"this run embedded {total_audio / 3600:.2f} h of audio in {total_s:.1f} s")

    from embedtag.store import open_store

    labelled = [s for s in stores if any(lab for lab in open_store(s).labels())]
    if labelled:
        _downstream(console, open_store(labelled[0]), out)
    return 0


def _downstream(console, store, out: Path) -> None:
    """Heads and search on one labelled store, each step skipped with its reason if unavailable."""
    for title, step in (("2. cross-validated heads", _heads_step), ("3. similar-sound search", _search_step)):
        console.rule(f"[bold]{title}[/] on {store.path.name}")
        try:
            step(console, store, out)
        except ImportError as exc:
            console.print(f"[yellow]skipped:[/] {exc}")


def _heads_step(console, store, out: Path) -> None:
    from embedtag.heads.api import fit_head

    for kind in ("logreg", "mlp"):
        head, report = fit_head(store, head=kind, folds=5, progress=False)
        r = report.as_dict()
        zs = f", zero-shot {r['zero_shot_lwlrap']:.3f}" if r.get("zero_shot_lwlrap") is not None else ""
        console.print(f"{kind:>7}: 5-fold lwlrap [bold]{r['cv_lwlrap']:.3f}[/] "
                      f"(label-prior baseline {r['prior_cv_lwlrap']:.3f}{zs}) on {r['n_clips']} clips, "
                      f"{r['n_labels']} labels")
    head.save(out / "head", overwrite=True)  # the demo replaces its own head on every run
    console.print(f"saved the MLP head to {out / 'head'} (embedtag predict {out / 'head'} <audio or store>)")


def _search_step(console, store, out: Path) -> None:
    from embedtag.search import build_index

    index = build_index(store)
    first = store.clip_ids[0]
    console.print(f"nearest neighbours of {first}:")
    for hit in index.query(first, k=5)[0]:
        console.print(f"  {hit['rank']}. {hit['clip_id']}  score={hit['score']:.3f}  labels={hit['labels']}")


if __name__ == "__main__":
    sys.exit(main())
