"""Speed, size and recall of the similarity index at 100k and 1M clips (not a test).

There are not a million real clips here, so the vectors are generated with the structure of real embeddings:

* 1024-d: a Gaussian mixture around the ~1,300 real YAMNet clip embeddings of ../shared/data (one component per
  real clip, picked uniformly); each component's covariance is s^2 times the covariance of the real embeddings
  (s drawn per component in [0.3, 0.7]), so the noise has the real spectrum; then clipped at 0, as YAMNet's own
  (post-ReLU) embeddings are.
* 2048-d: the same mixture before clipping, mapped through a fixed Gaussian random matrix 1024 -> 2048 and a ReLU:
  non-negative and about half zeros, like PANNs Cnn14's post-ReLU embeddings.

Vectors are generated in chunks (never all in memory): the first ``MAX_TRAIN_CLIPS`` train the index, every
chunk then updates the exact top-k of the held-out queries (brute force, chunk by chunk) and is added. Queries are
further draws from the same mixture, not indexed. The index uses the library defaults for the size (``kind``
``auto`` -> ``ivfpq`` above 50k clips), cosine metric, centring.

    python benchmarks/search_speed.py --sizes 100000 1000000 --dims 1024 2048 [--kinds auto hnsw] [--merge]

Each ivfpq index also gets a sweep of its query-time settings (``--no-sweep``), and sizes up to ``--flat-up-to``
an exact flat baseline. Writes benchmarks/results/search_speed.json (replaced; ``--merge`` keeps earlier runs of
other (n, dim, kind, factory)) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = ["dcase2016_task2_office", "donateacry_cleaned", "edgeimpulse_glass_break", "sonicpi_samples",
            "goldlab_oddball_novel_sounds"]
CHUNK = 50_000


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def real_yamnet_embeddings(shared: Path, cache: Path) -> np.ndarray:
    from embedtag.embeddings.pipeline import extract
    from embedtag.store import open_store

    parts = []
    for ds in DATASETS:
        src = shared / "data" / ds
        if src.is_dir():
            out = cache / f"{ds}-yamnet"
            if not (out / "manifest.json").is_file():  # made by search_real.py, or now
                extract(src, out, model="yamnet", progress=False)
            parts.append(open_store(out).embeddings())
    if not parts:
        raise SystemExit(f"no real datasets under {shared / 'data'}")
    return np.concatenate(parts).astype(np.float64)


class MixtureGenerator:
    """Chunks of synthetic embeddings with the structure of the real ones (see the module docstring)."""

    def __init__(self, real: np.ndarray, dim: int, seed: int = 0):
        self.centres = real
        self.factor = (real - real.mean(0)) / np.sqrt(len(real) - 1)  # z @ factor ~ N(0, cov(real))
        self.dim, self.seed = dim, seed
        rng = np.random.default_rng(seed + 999)
        self.scales = rng.uniform(0.3, 0.7, len(real))
        self.proj = (rng.normal(size=(real.shape[1], dim)) / np.sqrt(real.shape[1])) if dim != real.shape[1] else None

    def chunk(self, index: int, size: int, stream: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, index])
        comp = rng.integers(0, len(self.centres), size)
        z = rng.standard_normal((size, len(self.centres)), dtype=np.float32)
        x = self.centres[comp] + self.scales[comp, None] * (z @ self.factor.astype(np.float32))
        if self.proj is not None:
            x = x @ self.proj
        return np.maximum(x, 0).astype(np.float32)


def neighbour_structure(x: np.ndarray) -> dict:
    """Median cosine of the 1st and 10th nearest neighbours (centred), the 10th-11th gap, the participation ratio
    of the covariance spectrum (effective dimension) and the share of zeros: to compare synthetic with real."""
    from embedtag.search import exact_search

    z = x - x.mean(0)
    z = (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
    d, _ = exact_search(z, z, 12, "cosine")
    d = d[:, 1:]
    ev = np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False))
    return {"nn1_cos": round(float(np.median(d[:, 0])), 3), "nn10_cos": round(float(np.median(d[:, 9])), 3),
            "gap_10_11": round(float(np.median(d[:, 9] - d[:, 10])), 4),
            "participation_ratio": round(float(ev.sum() ** 2 / (ev ** 2).sum()), 1),
            "zeros": round(float((x == 0).mean()), 2)}


def merge_topk(d_best, i_best, d_new, i_new, k, larger_is_closer):
    d = np.concatenate([d_best, d_new], 1)
    i = np.concatenate([i_best, i_new], 1)
    order = np.argsort(-d if larger_is_closer else d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def recall_at_k(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact)]))


def latency(index, queries: np.ndarray, k: int, n_single: int) -> dict:
    index.search_rows(queries[:5], k)  # warm up
    times = []
    for q in queries[:n_single]:
        t = time.perf_counter()
        index.search_rows(q[None, :], k)
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    index.search_rows(queries, k)
    batch_s = time.perf_counter() - t
    ms = np.array(times) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "batch_qps": round(len(queries) / batch_s, 1), "batch_size": len(queries)}


def run_one(gen: MixtureGenerator, n: int, dim: int, kind: str, args) -> dict:
    from embedtag.search import MAX_TRAIN_CLIPS, SimilarityIndex, exact_search

    k = args.k
    overrides = {}
    if kind in ("auto", "ivfpq"):
        for name in ("nprobe", "k_factor", "pq_m", "nlist", "refine", "project_dim"):
            if getattr(args, name) is not None:
                overrides[name] = getattr(args, name)
    queries = gen.chunk(0, args.queries, stream=1)
    n_chunks = (n + CHUNK - 1) // CHUNK
    t_gen = t_build = t_exact = 0.0
    rss0 = rss_mb()

    def chunk(c):
        return gen.chunk(c, min(CHUNK, n - c * CHUNK))

    # training sample: the first chunks (draws are i.i.d., so they are a random sample)
    t = time.perf_counter()
    n_train_chunks = min(n_chunks, (MAX_TRAIN_CLIPS + CHUNK - 1) // CHUNK)
    first = [chunk(c) for c in range(n_train_chunks)]
    t_gen += time.perf_counter() - t
    t = time.perf_counter()
    index = SimilarityIndex.create(np.concatenate(first)[:MAX_TRAIN_CLIPS], backbone="synthetic", n_clips=n,
                                   kind=kind, metric="cosine", preprocess="center", **overrides)
    t_train = time.perf_counter() - t
    t_build += t_train
    qz = index.transform(queries)
    best_d = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for c in range(n_chunks):
        t = time.perf_counter()
        x = first[c] if c < len(first) else chunk(c)
        if c < len(first):
            first[c] = None
        t_gen += time.perf_counter() - t
        t = time.perf_counter()
        xz = index.transform(x)
        d, i = exact_search(xz, qz, k, "cosine")
        best_d, best_i = merge_topk(best_d, best_i, d, i + c * CHUNK, k, True)
        t_exact += time.perf_counter() - t
        t = time.perf_counter()
        start = c * CHUNK
        index.add(x, [str(j) for j in range(start, start + len(x))])
        t_build += time.perf_counter() - t
        del x, xz
        print(f"  {n}x{dim} {kind}: {min((c + 1) * CHUNK, n)}/{n} added", end="\r", flush=True)
    print()
    gc.collect()
    rss_built = rss_mb()

    _, rows = index.search_rows(queries, k)
    result = {
        "n": n, "dim": dim, "kind": index.manifest.kind, "requested_kind": kind, "factory": index.manifest.factory,
        "params": index.manifest.params, "metric": "cosine", "preprocess": "center", "k": k,
        "n_queries": len(queries), "recall_at_k": round(recall_at_k(rows, best_i, k), 4),
        "build_s": round(t_build, 1), "train_s": round(t_train, 1), "generate_s": round(t_gen, 1),
        "exact_search_s": round(t_exact, 1), "flat_size_mb": round(n * dim * 4 / 2**20, 1),
        "rss_growth_while_building_mb": round(rss_built - rss0, 1),
    }
    result.update(latency(index, queries, k, args.single))
    if result["kind"] == "ivfpq" and args.sweep:
        result["sweep"] = sweep(index, queries, best_i, k)
        result["refine_exhaustive_recall_at_k"] = refine_ceiling(index, queries[:200], best_i[:200], k)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        from embedtag.search import index_files

        index.save(tmp)
        files = index_files(tmp)
        result["faiss_file_mb"] = round(os.path.getsize(files["faiss"]) / 2**20, 1)
        result["ids_file_mb"] = round(os.path.getsize(files["ids"]) / 2**20, 1)
        del index
        gc.collect()
        import faiss

        before = rss_mb()
        loaded = faiss.read_index(str(files["faiss"]))
        result["faiss_in_memory_mb"] = round(rss_mb() - before, 1)
        del loaded
    result["size_vs_flat"] = round(result["faiss_file_mb"] / result["flat_size_mb"], 3)
    return result


def refine_ceiling(index, queries, exact_rows, k) -> float:
    """Recall of an exhaustive search on the re-ranking codes alone: what no shortlist setting can beat."""
    import faiss

    from embedtag.search import refine_index

    refine = faiss.downcast_index(refine_index(index.faiss_index).refine_index)
    q = index.preprocessor.transform(queries)
    q = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), np.float32)
    outer = faiss.downcast_index(index.faiss_index)
    if isinstance(outer, faiss.IndexPreTransform):  # the projection the refine codes live behind
        q = faiss.downcast_VectorTransform(outer.chain.at(0)).apply(q)
    _, rows = refine.search(np.ascontiguousarray(q, np.float32), k)
    return round(recall_at_k(rows, exact_rows, k), 4)


def sweep(index, queries, exact_rows, k) -> list[dict]:
    """Recall / latency trade-off of the query-time parameters of one built ivfpq index."""
    keep = dict(index.manifest.params)
    out = []
    for nprobe in (32, 64):
        for k_factor in (32, 64, 128, 256, 512):
            index.set_search_params(nprobe=nprobe, k_factor=k_factor)
            _, rows = index.search_rows(queries, k)
            out.append({"nprobe": nprobe, "k_factor": k_factor,
                        "recall_at_k": round(recall_at_k(rows, exact_rows, k), 4),
                        **latency(index, queries, k, 200)})
            print("   sweep", out[-1], flush=True)
    index.set_search_params(nprobe=keep["nprobe"], k_factor=keep["k_factor"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--kinds", nargs="+", default=["auto"], help="auto, flat, hnsw, ivfpq")
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries (recall, batch throughput)")
    ap.add_argument("--single", type=int, default=500, help="of which timed one at a time")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--nprobe", type=int)
    ap.add_argument("--k-factor", dest="k_factor", type=float)
    ap.add_argument("--pq-m", dest="pq_m", type=int)
    ap.add_argument("--nlist", type=int)
    ap.add_argument("--refine")
    ap.add_argument("--project-dim", dest="project_dim", type=int, help="ivfpq projection (0: off; default: auto)")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false",
                    help="do not time the nprobe x k_factor settings of each ivfpq index")
    ap.add_argument("--flat-up-to", type=int, default=100_000,
                    help="also build an exact flat index, as the baseline, at sizes up to this (0: never)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the runs of earlier invocations (other sizes/kinds) in the JSON instead of replacing it")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("EMBEDTAG_SHARED", REPO.parent / "shared")))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/embedtag-bench-stores"))
    ap.add_argument("--tmp", default=None, help="where the index is saved to measure its size")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "search_speed.json")
    ap.add_argument("--no-save", action="store_true", help="print only (for tuning runs)")
    args = ap.parse_args()
    os.environ.setdefault("EMBEDTAG_WEIGHTS_DIR", str(args.shared / "models"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import faiss

    load_start = round(os.getloadavg()[0], 1)  # what else used the CPU is part of the result
    real = real_yamnet_embeddings(args.shared, args.cache)
    # sanity check of the generator: at the real data's size, neighbours look like the real ones
    data_check = {"real_yamnet": neighbour_structure(real.astype(np.float32)),
                  "synthetic_1024_same_n": neighbour_structure(MixtureGenerator(real, 1024).chunk(0, len(real)))}
    runs = []
    for dim in args.dims:
        gen = MixtureGenerator(real, dim)
        for n in args.sizes:
            kinds = list(args.kinds) + (["flat"] if n <= args.flat_up_to and "flat" not in args.kinds else [])
            for kind in kinds:
                r = run_one(gen, n, dim, kind, args)
                print(json.dumps(r))
                runs.append(r)
    if not args.no_save:
        old = json.loads(args.out.read_text())["runs"] if args.out.is_file() and args.merge else []
        key = lambda r: (r["n"], r["dim"], r["requested_kind"], r["factory"])  # noqa: E731
        merged = {key(r): r for r in old}
        merged.update({key(r): r for r in runs})
        doc = {"benchmark": "search_speed",
               "data": "synthetic: Gaussian mixture around the real YAMNet embeddings of ../shared/data "
                       f"({len(real)} clips; component covariance = s^2 x covariance of the real embeddings, "
                       "s ~ U[0.3, 0.7]) clipped at 0; 2048-d: the unclipped mixture through a fixed random "
                       "1024x2048 Gaussian map and a ReLU (non-negative, ~half zeros, like PANNs Cnn14)",
               "data_check": data_check,
               "queries": "held-out draws of the same mixture; recall@k = |approximate top-k & exact top-k| / k",
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, faiss {faiss.__version__}, "
                          f"{faiss.omp_get_max_threads()} OpenMP threads",
               "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 1)},
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "runs": sorted(merged.values(), key=lambda r: (r["dim"], r["n"], r["requested_kind"]))}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        runs = doc["runs"]
    print_table(runs)


def table(runs) -> str:
    lines = ["| n | dim | kind | index | build s | FAISS file MB (flat MB) | size/flat | RAM MB | recall@10 | "
             "p50 ms | p99 ms | batch q/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['n']:,} | {r['dim']} | {r['kind']} | `{r['factory']}` | {r['build_s']} | "
                     f"{r['faiss_file_mb']} ({r['flat_size_mb']}) | {r['size_vs_flat']:.2f} | "
                     f"{r['faiss_in_memory_mb']} "
                     f"| {r['recall_at_k']:.3f} | {r['p50_ms']} | {r['p99_ms']} | {r['batch_qps']} |")
    for r in runs:
        if r.get("sweep"):
            lines += ["", f"Query-time settings of the {r['n']:,} x {r['dim']} `{r['factory']}` index "
                          "(exhaustive search "
                          f"on its re-ranking codes alone: recall@10 {r.get('refine_exhaustive_recall_at_k')}):", "",
                      "| nprobe | k_factor | recall@10 | p50 ms | p99 ms | batch q/s |", "|---|---|---|---|---|---|"]
            lines += [f"| {w['nprobe']} | {w['k_factor']} | {w['recall_at_k']:.3f} | {w['p50_ms']} | {w['p99_ms']} | "
                      f"{w['batch_qps']} |" for w in r["sweep"]]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """The results JSON as markdown (used by benchmarks/run_all.py)."""
    check = result.get("data_check") or {}
    lines = [f"| {name} | {c['nn1_cos']} | {c['nn10_cos']} | {c['gap_10_11']} | {c['participation_ratio']} | "
             f"{c['zeros']} |" for name, c in check.items()]
    check_md = "\n".join(["Generator check at the real data's size (median cosine of neighbours after centring):", "",
                          "| vectors | 1st NN | 10th NN | 10th-11th gap | effective dim | zeros |",
                          "|---|---|---|---|---|---|", *lines]) if lines else ""
    load = result.get("load_average_1min")
    machine = f"Machine: {result['machine']}" + (f"; 1-minute load average {load['start']} at the start, "
                                                  f"{load['end']} at the end." if load else ".")
    return "\n\n".join([f"Data: {result['data']}.", check_md, f"Queries: {result['queries']}.", machine,
                         table(result["runs"])])


def print_table(runs) -> None:
    print()
    print(table(runs))


if __name__ == "__main__":
    main()
