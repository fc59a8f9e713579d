"""Load on `embedtag serve` over loopback: micro-batching against a naive server with one backbone call per request.

Both servers run the same backbone on the same real clips (edgeimpulse_glass_break, 1 s each) and answer the same
AudioSet tags; each runs in its own process (uvicorn, one event loop), started and stopped by this script. The
naive server is a plain FastAPI endpoint that decodes the upload and calls the backbone for that request alone,
in FastAPI's thread pool (what a first deployment usually looks like). For 1, 8 and 32 concurrent clients (each
sends a clip, waits for the answer, sends the next) for ``--seconds`` each: requests/s, p50/p99 latency, errors,
and the server's peak RSS.

    python -m benchmarks.serve_load [--model efficientat-mn04] [--clients 1 8 32] [--seconds 20]

Writes benchmarks/results/serve_load.json. Goal: micro-batching at 32 clients >= 2x the naive server's requests/s,
with no errors.
"""


import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMBEDTAG_SHARED", REPO.parent / "shared"))
DATASET = "edgeimpulse_glass_break"


# ------------------------------------------------------------------------------------------------ servers
def naive_app(model: str):
    """One request = one decode + one backbone call, in FastAPI's thread pool (no batching, no queue)."""
    import tempfile

    import numpy as np
    from fastapi import FastAPI, UploadFile

    from embedtag.embeddings.registry import load_backbone
    from embedtag.frames import iter_frames

    backbone = load_backbone(model)
    app = FastAPI()

    @app.post("/v1/tag")
    def tag(file: UploadFile):
        with tempfile.NamedTemporaryFile(suffix=".flac") as tmp:
            tmp.write(file.file.read())
            tmp.flush()
            windows = [w for _, w in iter_frames(tmp.name, backbone.sample_rate, 10.0)]
        out = backbone.embed(windows)
        w = np.array([x.size for x in windows], np.float64)
        scores = (out.scores * w[:, None]).sum(0) / w.sum()
        top = np.argsort(-scores)[:10]
        return {"tags": [{"label": backbone.class_names[j], "score": float(scores[j])} for j in top]}

    return app


def serve(kind: str, model: str, port: int, threads: int | None) -> None:
    """Child process: run one server until killed."""
    import logging

    import uvicorn

    logging.getLogger("embedtag.serve").setLevel(logging.WARNING)
    if threads:
        import torch

        torch.set_num_threads(threads)  # the same for both servers
    if kind == "batched":
        from embedtag.serve import create_app

        app = create_app(model=model, threads=threads)
    else:
        app = naive_app(model)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def start(kind: str, model: str, threads: int | None = None) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serve_load", "--serve", kind, "--model", model,
                             "--port", str(port)] + (["--threads", str(threads)] if threads else []), cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the {kind} server exited with {proc.returncode}")
        try:
            code = httpx.get(url + "/openapi.json", timeout=1).status_code
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if code == 200:
            return proc, url
        proc.kill()
        raise RuntimeError(f"the {kind} server answers {code} at start-up")
    proc.kill()
    raise RuntimeError(f"the {kind} server did not start")


# ------------------------------------------------------------------------------------------------ load
async def load(url: str, clips: list[tuple[str, bytes]], clients: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop = time.monotonic() + seconds

    async def client(i: int, c: httpx.AsyncClient) -> None:
        j = i
        while time.monotonic() < stop:
            name, data = clips[j % len(clips)]
            j += clients
            t = time.perf_counter()
            try:
                r = await c.post(url + "/v1/tag", files={"file": (name, data, "audio/flac")})
                ok = r.status_code == 200 and r.json()["tags"]
                key = None if ok else f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                key = type(exc).__name__
            if key is None:
                latencies.append(time.perf_counter() - t)
            else:
                errors[key] = errors.get(key, 0) + 1

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:
        start_t = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i in range(clients)))
        took = time.perf_counter() - start_t
    lat = sorted(latencies)

    def pct(p: float) -> float | None:
        return round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None

    return {"clients": clients, "requests": len(lat), "seconds": round(took, 2),
            "requests_per_s": round(len(lat) / took, 2), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "errors": sum(errors.values()), "error_kinds": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientat-mn04")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--seconds", type=float, default=20.0, help="load per step (per server and client count)")
    ap.add_argument("--n-clips", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0,
                    help="PyTorch CPU threads of both servers (0: PyTorch's default)")
    ap.add_argument("--servers", nargs="+", default=["batched", "naive"], choices=["batched", "naive"])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_load.json")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--serve", choices=["batched", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("EMBEDTAG_WEIGHTS_DIR", str(SHARED / "models"))
    if args.serve:
        serve(args.serve, args.model, args.port, args.threads or None)
        return

    folder = SHARED / "data" / DATASET / "audio"
    files = sorted(folder.iterdir())[:args.n_clips]
    if not files:
        sys.exit(f"no clips in {folder}")
    clips = [(f.name, f.read_bytes()) for f in files]
    rows = []
    for kind in args.servers:
        proc, url = start(kind, args.model, args.threads or None)
        try:
            asyncio.run(load(url, clips, 2, 3.0))  # warm-up: first calls allocate
            for n in args.clients:
                row = {"server": kind, **asyncio.run(load(url, clips, n, args.seconds))}
                print(json.dumps(row), flush=True)
                rows.append(row)
            rss = peak_rss_mb(proc.pid)
            for r in rows:
                if r["server"] == kind:
                    r["peak_rss_mb"] = None if rss is None else round(rss, 1)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    top = max(args.clients)
    rps = {r["server"]: r["requests_per_s"] for r in rows if r["clients"] == top}
    result = {
        "model": args.model, "dataset": f"{DATASET} ({len(clips)} real 1 s clips, FLAC)",
        "seconds_per_step": args.seconds, "torch_threads": args.threads or "default",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "rows": rows,
        "speedup_at_max_clients": round(rps["batched"] / rps["naive"], 2) if rps.get("naive") else None,
        "max_clients": top,
        "goal": "batched >= 2x naive requests/s at 32 clients, no errors",
    }
    print(markdown(result))
    if not args.no_save:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


def markdown(result: dict) -> str:
    """The results JSON as markdown (used by benchmarks/run_all.py)."""
    lines = ["| server | clients | requests/s | p50 ms | p99 ms | errors | peak RSS MB |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['server']} | {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['errors']} | {r.get('peak_rss_mb')} |")
    setup = (f"Backbone {result['model']} ({result.get('torch_threads', 'default')} PyTorch thread(s) in each "
             f"server); clips: {result['dataset']}; {result['seconds_per_step']:g} s per step; "
             f"{result['machine']}, 1-minute load average {result['load_average_1min']} at the end.")
    verdict = (f"Micro-batching serves **{result['speedup_at_max_clients']}x** the naive server's requests/s at "
               f"{result['max_clients']} clients (goal: {result['goal']}). Peak RSS is each server process's "
               "high-water mark over all its steps. On a shared 2-core CPU the numbers move with the other "
               "processes' load: the model thread and the event loop also compete for the GIL, which keeps batches "
               "small.")
    return "\n\n".join([setup, "\n".join(lines), verdict])


if __name__ == "__main__":
    main()
