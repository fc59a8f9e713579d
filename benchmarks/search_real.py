"""Retrieval quality of similar-sound search on the real labelled audio in ../shared/data (not a test).

For each dataset: embed with real YAMNet (cached store), build an exact cosine index with raw, centred and
PCA-whitened embeddings, and report leave-one-out precision@5 / mAP@5 (a neighbour is relevant when it shares a
label with the query) next to the precision of a random ranking.

    python benchmarks/search_real.py [--shared ../shared] [--cache /tmp/embedtag-bench-stores] [-k 5]

Writes benchmarks/results/search_real.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = ["dcase2016_task2_office", "donateacry_cleaned", "edgeimpulse_glass_break", "sonicpi_samples",
            "goldlab_oddball_novel_sounds"]
PREPROCESSING = ["none", "center", "whiten"]


def informative_labels(store) -> dict:
    """Labels by clip id without labels every clip carries (donateacry's ``baby_cry``): they make every pair
    relevant and the score meaningless."""
    ids, labels = store.clip_ids, store.labels()
    everywhere = set.intersection(*(set(v or ()) for v in labels)) if labels else set()
    return {c: [x for x in (v or ()) if x not in everywhere] or None for c, v in zip(ids, labels)}, everywhere


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("EMBEDTAG_SHARED", REPO.parent / "shared")))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/embedtag-bench-stores"),
                    help="where the YAMNet stores are extracted (reused on later runs)")
    ap.add_argument("--model", default="yamnet")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "search_real.json")
    args = ap.parse_args()
    os.environ.setdefault("EMBEDTAG_WEIGHTS_DIR", str(args.shared / "models"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from embedtag.embeddings.pipeline import extract
    from embedtag.search import build_index, evaluate_index
    from embedtag.store import open_store

    rows = []
    for ds in DATASETS:
        src = args.shared / "data" / ds
        if not src.is_dir():
            print(f"skipping {ds}: {src} not found")
            continue
        store_dir = args.cache / f"{ds}-{args.model}"
        t0 = time.perf_counter()
        extract(src, store_dir, model=args.model, progress=False)
        store = open_store(store_dir)
        labels, dropped = informative_labels(store)
        row = {"dataset": ds, "clips": len(store), "extract_s": round(time.perf_counter() - t0, 1),
               "labels_ignored": sorted(dropped)}
        for pre in PREPROCESSING:
            index = build_index(store, kind="flat", metric="cosine", preprocess=pre)
            ev = evaluate_index(index, labels, k=args.k)
            row[pre] = {"precision_at_k": round(ev.precision_at_k, 4), "map_at_k": round(ev.map_at_k, 4)}
            row["chance_precision"] = round(ev.chance_precision, 4)
            row["n_queries"] = ev.n_queries
        rows.append(row)
        print(f"{ds}: done", flush=True)

    result = {"benchmark": "search_real", "model": args.model, "k": args.k, "metric": "cosine", "kind": "flat",
              "relevance": "a neighbour is relevant when it shares a label with the query (leave-one-out)",
              "whitening": "PCA whitening on all min(dim, n-1) components, eps = 0.1 x largest eigenvalue",
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "datasets": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    k = args.k
    print(f"\n| dataset | clips | queries | chance P@{k} | raw P@{k} | centred P@{k} | whitened P@{k} | "
          f"raw mAP@{k} | centred mAP@{k} | whitened mAP@{k} |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        note = f" (ignoring `{'`, `'.join(r['labels_ignored'])}`)" if r["labels_ignored"] else ""
        print(f"| {r['dataset']}{note} | {r['clips']} | {r['n_queries']} | {r['chance_precision']:.3f} | "
              + " | ".join(f"{r[p]['precision_at_k']:.3f}" for p in PREPROCESSING) + " | "
              + " | ".join(f"{r[p]['map_at_k']:.3f}" for p in PREPROCESSING) + " |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
