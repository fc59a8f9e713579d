"""Extraction throughput on this machine, against model-only throughput and the naive peer loops.

    python -m benchmarks.extract_speed [--quick]

Measured in one run, on the real clips in ../shared/data (EMBEDTAG_SHARED moves it):
- end-to-end `extract` (decode in threads + batched inference + Parquet shards, at its defaults) for YAMNet and
  PANNs Cnn14, against model-only throughput on pre-decoded audio at the best batch size (and thread use) tried:
  both on one loaded, warmed-up backbone, in ``--rounds`` alternating rounds (default 5), the fastest of each side
  counting; the first extract is kept as ``first_run_clips_per_s``; each round also runs extract with the model
  call replaced by zeros (``pipeline_only``: decoding, windows, pooling, store), whose CPU seconds against
  model-only's give ``cpu_ceiling``, the ratio reachable when that work shares the model's cores;
- the naive peers: `librosa.load` + `tensorflow_hub` YAMNet one file per call, and `librosa.load` +
  `panns_inference.AudioTagging.inference` one file per call;
- peak memory (max RSS of a fresh process) of `extract` over 1x and 4x the clips;
- whole process, every backbone, on a short-clip set and a long-clip set: ``embedtag extract`` as a user runs it
  (interpreter start, imports, weights, decoding, store) against the naive loop of each backbone, also a fresh
  process (soundfile + soxr decoding, one model call per file): the TFLite interpreter, the TF Hub SavedModel,
  panns_inference, EfficientAT as its upstream inference script does it (mel front end + model per file), and
  yamnet-torch one file per call. Ratios compare runs made back to back in the same run: each side runs
  ``--repeats`` times (default 5), alternating, and its fastest run counts (the machine is shared).
PANNs runs on a Cnn14 checkpoint with seeded random weights in the official format (the real one is not
reachable here); speed does not depend on the weight values. Results: benchmarks/results/extract_speed.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMBEDTAG_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"


def clip_files(limit: int | None) -> list[Path]:
    files = []
    for d in sorted((SHARED / "data").iterdir()):
        if (d / "audio").is_dir():
            files += sorted((d / "audio").iterdir())
    rng = np.random.default_rng(0)
    rng.shuffle(files)
    return files[:limit] if limit else files


def make_cnn14(path: Path) -> None:
    import torch

    from embedtag.embeddings.backbones.panns import PANNS_CONFIG, import_panns_models

    torch.manual_seed(0)
    model = import_panns_models().Cnn14(**PANNS_CONFIG)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, path)


def link_dir(files: list[Path], dest: Path, copies: int = 1) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for c in range(copies):
        for f in files:
            (dest / f"{c}_{f.parent.parent.name}_{f.name}").symlink_to(f)
    return dest


def _extract_once(bb, files_dir: Path, tmp: Path, **kw) -> dict:
    from embedtag.embeddings.pipeline import extract

    out = tmp / f"store_{bb.name}_{time.time_ns()}"
    c = _cpu_s()
    s = extract(files_dir, out, model=bb, progress=False, **kw)
    cpu_s = _cpu_s() - c
    shutil.rmtree(out, ignore_errors=True)
    return {"clips": s.n_stored, "audio_s": s.audio_s, "elapsed_s": s.elapsed_s, "clips_per_s": s.clips_per_s,
            "realtime_factor": s.realtime_factor, "failed": s.n_failed, "cpu_s": cpu_s}


def _model_windows(files: list[Path], bb) -> tuple[list[np.ndarray], float]:
    """The files decoded beforehand and cut into the windows the pipeline gives the model."""
    from embedtag.embeddings.audio import load_audio, pad_to
    from embedtag.embeddings.pipeline import DEFAULT_WINDOW_S

    win = int(DEFAULT_WINDOW_S * bb.sample_rate)
    windows, audio_s = [], 0.0
    for f in files:
        x, _ = load_audio(f, bb.sample_rate)
        audio_s += x.size / bb.sample_rate
        windows += [pad_to(x[i:i + win], bb.min_samples) for i in range(0, x.size, win)]
    return windows, audio_s


def _cpu_s() -> float:
    """CPU seconds this process has used so far, all threads (user + system)."""
    t = os.times()
    return t.user + t.system


def _model_only_once(bb, windows: list[np.ndarray], n_clips: int, batch_sizes: list[int]) -> tuple[dict, dict]:
    """clips/s of backbone.embed on pre-decoded windows, for every batch size, and for a backbone that changes how
    it uses the CPU in a job (Backbone.cpu_job) both plain calls (the library's own threads) and the job's way;
    and the CPU seconds each setting used."""
    from embedtag.embeddings.backbones.base import Backbone

    ways = ["plain", "cpu_job"] if type(bb).cpu_job is not Backbone.cpu_job else ["plain"]
    got, cpu = {}, {}
    for way in ways:
        with bb.cpu_job() if way == "cpu_job" else contextlib.nullcontext():
            for bs in batch_sizes:
                key = f"{bs}" if len(ways) == 1 else f"{bs} {way}"
                t, c = time.perf_counter(), _cpu_s()
                for i in range(0, len(windows), bs):
                    bb.embed(windows[i:i + bs])
                got[key] = n_clips / (time.perf_counter() - t)
                cpu[key] = _cpu_s() - c
    return got, cpu


def _pipeline_only_once(bb, files_dir: Path, tmp: Path) -> dict:
    """``extract`` with the model call replaced by zeros of the right shape: what decoding, windowing, pooling
    and the store cost on their own (CPU seconds of all threads, and wall time)."""
    from embedtag.embeddings.backbones.base import BackboneOutput

    def no_model(waves, **_):
        n = len(waves)
        return BackboneOutput(np.zeros((n, bb.embedding_dim), np.float32),
                              np.zeros((n, len(bb.class_names)), np.float32), None)

    bb.embed = no_model  # an instance attribute, shadowing the method until deleted
    try:
        r = _extract_once(bb, files_dir, tmp)
        return {"cpu_s": r["cpu_s"], "elapsed_s": r["elapsed_s"]}
    finally:
        del bb.embed


def e2e_and_model_only(files: list[Path], files_dir: Path, model: str, tmp: Path, batch_sizes: list[int],
                       repeats: int = 5) -> tuple[dict, dict, dict]:
    """End-to-end ``extract`` (its defaults) and model-only throughput on one loaded, warmed-up backbone, in
    ``repeats`` alternating rounds; the fastest round of each counts.

    Both sides run on the same instance in the same state: TensorFlow's first minutes of calls run up to ~20%
    slower (its buffers growing), so timing all of one side first and then the other credited the second with
    the warm-up the first had paid (600 real clips, TF YAMNet: extract 91 clips/s in its first round, 110-112 in
    later ones). The first extract is kept as ``first_run_clips_per_s``."""
    from embedtag.embeddings.registry import load_backbone

    bb = load_backbone(model, device="cpu")
    batch_sizes = sorted({*batch_sizes, bb.default_batch_size})  # extract's own setting is always measured
    windows, audio_s = _model_windows(files, bb)
    bb.warmup()  # one-off first-call costs (graph tracing, buffers) paid before timing either side
    bb.embed(windows[:4])
    e2e_runs, mo_runs, mo_cpu, pipe_runs = [], [], [], []
    for _ in range(repeats):
        e2e_runs.append(_extract_once(bb, files_dir, tmp))
        got, cpu = _model_only_once(bb, windows, len(files), batch_sizes)
        mo_runs.append(got)
        mo_cpu.append(cpu)
        pipe_runs.append(_pipeline_only_once(bb, files_dir, tmp))
    e2e = {**max(e2e_runs, key=lambda r: r["clips_per_s"]), "first_run_clips_per_s": e2e_runs[0]["clips_per_s"],
           "rounds_clips_per_s": [r["clips_per_s"] for r in e2e_runs], "rounds_cpu_s": [r["cpu_s"] for r in e2e_runs]}
    best = {k: max(r[k] for r in mo_runs) for k in mo_runs[0]}
    key = max(best, key=best.get)
    # the setting extract itself runs (its default batch, in its cpu_job where the backbone has one)
    ways = " cpu_job" if any(k.endswith(" cpu_job") for k in best) else ""
    extract_key = f"{bb.default_batch_size}{ways}"
    mo = {"clips_per_s": best[key], "best_setting": key, "by_batch_size": best, "audio_s": audio_s,
          "rounds_best_clips_per_s": [max(r.values()) for r in mo_runs], "extract_setting": extract_key,
          "rounds_cpu_s_extract_setting": [c[extract_key] for c in mo_cpu]}
    pipe = {"what": "extract with the model call replaced by zeros: decoding, windows, pooling, store",
            "rounds_cpu_s": [r["cpu_s"] for r in pipe_runs], "rounds_elapsed_s": [r["elapsed_s"] for r in pipe_runs]}
    return e2e, mo, pipe


def cpu_ceiling(mo: dict, pipe: dict) -> float:
    """The end-to-end / model-only ratio reachable when the pipeline's own CPU work shares the model's cores and
    nothing else is lost: model CPU / (model CPU + pipeline CPU), medians of the rounds. Where the model keeps
    every core busy (2 cores here) decoding has nowhere else to run; with spare cores the ceiling is 1."""
    m, p = statistics.median(mo["rounds_cpu_s_extract_setting"]), statistics.median(pipe["rounds_cpu_s"])
    return m / (m + p)


def peer_yamnet_hub(files: list[Path]) -> dict:
    import librosa
    import tensorflow_hub as hub

    model = hub.load(str(SHARED / "models" / "yamnet" / "saved_model"))
    model(np.zeros(16000, np.float32))
    t = time.perf_counter()
    for f in files:
        x, _ = librosa.load(f, sr=16000, mono=True)
        _, emb, _ = model(x)
        emb.numpy().mean(axis=0)
    el = time.perf_counter() - t
    return {"clips_per_s": len(files) / el, "elapsed_s": el}


def peer_panns_inference(files: list[Path], ckpt: Path) -> dict:
    import librosa

    # panns_inference wgets its label CSV into ~/panns_data at import: give it a home that already has one
    home = Path(tempfile.mkdtemp())
    (home / "panns_data").mkdir()
    shutil.copy(REPO / "embedtag" / "embeddings" / "data" / "audioset_labels.csv",
                home / "panns_data" / "class_labels_indices.csv")
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        from panns_inference import AudioTagging

        tagger = AudioTagging(checkpoint_path=str(ckpt), device="cpu")  # >3e8 bytes, so it does not wget over it
        tagger.inference(np.zeros((1, 32000), np.float32))
        t = time.perf_counter()
        for f in files:
            x, _ = librosa.load(f, sr=32000, mono=True)
            # Cnn14 needs ~1 s of input (five 2x poolings); a user of the peer must pad short clips too
            tagger.inference(np.pad(x, (0, max(0, 32000 - x.size)))[None, :])
        el = time.perf_counter() - t
    finally:
        if old_home is not None:
            os.environ["HOME"] = old_home
    return {"clips_per_s": len(files) / el, "elapsed_s": el}


def peak_rss_mb(files_dir: Path, model: str, out: Path) -> float:
    code = ("from embedtag.embeddings.pipeline import extract; from embedtag.report import peak_rss_mib; "
            f"extract({str(files_dir)!r}, {str(out)!r}, model={model!r}, progress=False); "
            "print(peak_rss_mib())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    return float(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- whole process, naive loops
#: short clips (median ~0.5 s) and long ones (~7 s), from the real labelled sets
CLIP_SETS = {"short": ["goldlab_oddball_novel_sounds", "sonicpi_samples", "dcase2016_task2_office"],
             "long": ["donateacry_cleaned"]}
WHOLE_PROCESS_MODELS = ["yamnet-lite", "yamnet", "yamnet-torch", "efficientat-mn04", "panns-cnn14"]


def set_files(name: str, limit: int | None) -> list[Path]:
    files = []
    for d in CLIP_SETS[name]:
        files += sorted((SHARED / "data" / d / "audio").iterdir())
    np.random.default_rng(1).shuffle(files)
    return files[:limit] if limit else files


def _read(path, sample_rate: int) -> np.ndarray:
    import soundfile as sf
    import soxr

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    return soxr.resample(x, sr, sample_rate).astype(np.float32) if sr != sample_rate else x


def naive_loop(model: str, files: list[str]) -> None:
    """What a user writes without embedtag: decode each file, one model call, mean of the embeddings."""
    weights = Path(os.environ["EMBEDTAG_WEIGHTS_DIR"])
    if model == "yamnet-lite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(weights / "yamnet" / "yamnet.tflite"), num_threads=os.cpu_count())
        inp = it.get_input_details()[0]["index"]
        emb_idx = next(d["index"] for d in it.get_output_details() if d["shape"][-1] == 1024)
        for f in files:
            x = _read(f, 16000)
            it.resize_tensor_input(inp, [x.size], strict=False)
            it.allocate_tensors()
            it.set_tensor(inp, x)
            it.invoke()
            it.get_tensor(emb_idx).mean(axis=0)
    elif model == "yamnet":
        import tensorflow_hub as hub

        m = hub.load(str(weights / "yamnet" / "saved_model"))
        for f in files:
            m(_read(f, 16000))[1].numpy().mean(axis=0)
    elif model == "yamnet-torch":
        from embedtag.embeddings.registry import load_backbone

        bb = load_backbone("yamnet-torch", device="cpu")
        for f in files:
            bb.embed([_read(f, 16000)])
    elif model.startswith("efficientat"):
        import torch

        from embedtag.embeddings.backbones.efficientat import MelFrontEnd, mn_model
        from embedtag.embeddings.registry import get_spec

        spec = get_spec(model)
        net = mn_model(spec.options["width_mult"])
        net.load_state_dict(torch.load(weights / "efficientat" / spec.weights.relpath, weights_only=True))
        net.eval()
        mel = MelFrontEnd()
        with torch.no_grad():
            for f in files:
                x = torch.from_numpy(_read(f, 32000))[None]
                net(mel(x).unsqueeze(1))
    elif model == "panns-cnn14":
        home = Path(tempfile.mkdtemp())  # panns_inference wgets its label CSV into ~/panns_data at import
        (home / "panns_data").mkdir()
        shutil.copy(REPO / "embedtag" / "embeddings" / "data" / "audioset_labels.csv",
                    home / "panns_data" / "class_labels_indices.csv")
        os.environ["HOME"] = str(home)
        from panns_inference import AudioTagging

        tagger = AudioTagging(checkpoint_path=str(weights / "panns" / "Cnn14_mAP=0.431.pth"), device="cpu")
        for f in files:
            x = _read(f, 32000)
            tagger.inference(np.pad(x, (0, max(0, 32000 - x.size)))[None, :])
    else:
        raise SystemExit(f"no naive loop for {model}")


def _wall(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    el = time.perf_counter() - t
    if r.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-2000:]}")
    return el


def whole_process(models: list[str], limits: dict[str, int | None], tmp: Path, repeats: int = 1) -> list[dict]:
    """``embedtag extract`` vs the naive loop, each a fresh process, timed from start to exit."""
    os.environ["EMBEDTAG_HOME"] = str(tmp / "home")
    if "yamnet-torch" in models:  # its one-off weight conversion is not what is measured
        from embedtag.embeddings.registry import load_backbone

        load_backbone("yamnet-torch", device="cpu")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # bytecode as an installed package has it (pip compiles at install; with PYTHONDONTWRITEBYTECODE set, as on these
    # machines, a source checkout would otherwise compile embedtag's modules in every process: ~0.09 s)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "embedtag"), str(REPO / "benchmarks")],
                   check=True, capture_output=True)
    rows = []
    for set_name, limit in limits.items():
        files = set_files(set_name, limit)
        d = link_dir(files, tmp / f"wp_{set_name}")
        listing = tmp / f"wp_{set_name}.txt"
        listing.write_text("\n".join(map(str, files)))
        audio_s = sum(_read(f, 16000).size / 16000 for f in files)
        for model in models:
            e2e, naive = [], []
            for r in range(repeats):  # alternate, so that load on the shared machine hits both alike
                naive.append(_wall([sys.executable, "-m", "benchmarks.extract_speed", "--naive", model,
                                    "--files", str(listing)], env))
                e2e.append(_wall([sys.executable, "-m", "embedtag", "extract", str(d), "--out",
                                  str(tmp / f"wp_store_{set_name}_{model}_{r}"), "--model", model, "-q"], env))
            row = {"set": set_name, "model": model, "clips": len(files), "audio_s": round(audio_s, 1),
                   "extract_s": min(e2e), "naive_s": min(naive), "extract_over_naive_speed": min(naive) / min(e2e)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def whole_process_note(rows: list[dict], repeats: int) -> str:
    """What the whole-process table says, in words (written from the rows, so it stays true to them)."""
    losers = [f"{r['model']} on the {r['set']} set ({r['extract_over_naive_speed']:.2f}x)" for r in rows
              if r["extract_over_naive_speed"] < 1]
    text = (f"Fastest of {repeats} runs of each side, naive and extract alternating. extract_over_naive_speed > 1: "
            "`embedtag extract -q` (a fresh process: CLI, store, decoding threads, batching; -q prints its summary "
            "as plain lines) finished sooner than the naive loop. ")
    torch_models = {"yamnet-torch", "panns-cnn14"} | {r["model"] for r in rows if r["model"].startswith("efficientat")}
    if any(r["model"] in torch_models and r["extract_over_naive_speed"] > 2 for r in rows):
        text += ("The PyTorch naive loops run with PyTorch's default of one thread per core; on a shared, busy 2-core "
                 "machine those OpenMP threads busy-wait against the other work, which is most of extract's lead "
                 "over them (extract runs single-threaded calls in parallel, one per core; model_only.by_batch_size "
                 "shows plain calls against those). On an idle machine that lead would be smaller. ")
    if any(r["model"] in torch_models | {"yamnet"} for r in rows):  # TFLite's interpreter leaves little to walk
        text += ("Part of extract's lead on the PyTorch and TensorFlow backbones is its exit: the CLI freezes the "
                 "garbage collector before the interpreter's teardown (~0.35 s after importing PyTorch), which the "
                 "naive scripts do not. ")
    if not losers:
        return text + "extract beat the naive loop for every backbone on both sets."
    return text + ("Slower than the naive loop: " + "; ".join(losers) + ". Where the model's calls are cheap "
                   "and the job takes seconds, the fixed start-up a naive script does not have decides: the CLI "
                   "(Typer), pyarrow for the Parquet store, store creation and locking.")


def machine() -> dict:
    import torch

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "ram_gib": round(mem_gib, 1),
            "python": platform.python_version(), "torch": torch.__version__, "device": "cpu",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer clips (a smoke run, not for the README)")
    ap.add_argument("--whole-process-only", action="store_true", help="only the extract-vs-naive-loop section")
    ap.add_argument("--models", default=",".join(WHOLE_PROCESS_MODELS), help="backbones of the whole-process section")
    ap.add_argument("--limits", help="SHORT,LONG clip counts of the whole-process section")
    ap.add_argument("--repeats", type=int, default=5,
                    help="whole-process runs of each side, alternating (the fastest counts; "
                         "5: this shared VM varies ±20%%)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating rounds of extract and model-only on one warm backbone (the fastest counts)")
    ap.add_argument("--naive", help=argparse.SUPPRESS)  # internal: run one naive loop over --files
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.naive:
        naive_loop(args.naive, Path(args.files).read_text().splitlines())
        return {}
    os.environ.setdefault("EMBEDTAG_WEIGHTS_DIR", str(SHARED / "models"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    n_yam, n_panns = (60, 12) if args.quick else (600, 60)
    tmp = Path(tempfile.mkdtemp(prefix="embedtag-bench-"))
    results: dict = {"machine": machine(), "note": "2-core CPU; ratios are measured in "
                     "the same run. PANNs uses seeded random weights in the official checkpoint format."}
    try:
        ckpt = tmp / "mirror" / "panns" / "Cnn14_mAP=0.431.pth"
        make_cnn14(ckpt)
        mirror = tmp / "mirror"
        for sub in ("yamnet", "efficientat"):
            if (SHARED / "models" / sub).exists():
                (mirror / sub).symlink_to(SHARED / "models" / sub)
        os.environ["EMBEDTAG_WEIGHTS_DIR"] = str(mirror)
        # 200 short and 60 long clips keep the section within ~20 min on 2 busy cores (PANNs' naive loop is the
        # slow one); a smaller set is the harder case for extract (its fixed start-up weighs more)
        limits = {"short": 40, "long": 10} if args.quick else {"short": 200, "long": 60}
        if args.limits:
            limits = dict(zip(("short", "long"), (int(v) for v in args.limits.split(","))))
        results["whole_process"] = whole_process(args.models.split(","), limits, tmp, repeats=args.repeats)
        results["whole_process_note"] = whole_process_note(results["whole_process"], args.repeats)
        if args.whole_process_only:
            print(json.dumps(results["whole_process"], indent=1))
            return results
        for model, n, peer in (("yamnet", n_yam, "tensorflow_hub YAMNet, one file per call (librosa.load)"),
                               ("panns-cnn14", n_panns,
                                "panns_inference.AudioTagging, one file per call (librosa.load)")):
            files = clip_files(n)
            d = link_dir(files, tmp / f"clips_{model}")
            e2e, mo, pipe = e2e_and_model_only(files, d, model, tmp,
                                               [8, 32, 64] if model == "yamnet" else [4, 16], repeats=args.rounds)
            p = peer_yamnet_hub(files) if model == "yamnet" else peer_panns_inference(files, ckpt)
            med = statistics.median
            # the headline numbers first (the README's table shows the first columns), the rounds behind them after
            results[model] = {"clips": len(files), "end_to_end_clips_per_s": e2e["clips_per_s"],
                              "model_only_clips_per_s": mo["clips_per_s"],
                              "e2e_over_model_only": e2e["clips_per_s"] / mo["clips_per_s"],
                              "e2e_over_model_only_median": med(e2e["rounds_clips_per_s"])
                              / med(mo["rounds_best_clips_per_s"]),
                              "cpu_ceiling": cpu_ceiling(mo, pipe),
                              "e2e_over_peer": e2e["clips_per_s"] / p["clips_per_s"],
                              "end_to_end": e2e, "model_only": mo, "pipeline_only": pipe, "peer": {"what": peer, **p}}
            print(model, json.dumps(results[model], indent=1, default=float), flush=True)
        files = clip_files(n_yam // 2)
        one, four = link_dir(files, tmp / "mem1"), link_dir(files, tmp / "mem4", copies=4)
        # yamnet's peak is set by loading TensorFlow; yamnet-lite (a few MB of model) shows the pipeline's own growth
        results["memory"] = []
        for model in ("yamnet", "yamnet-lite"):
            m = {"model": model, "clips_1x": len(files), "clips_4x": 4 * len(files),
                 "peak_rss_mb_1x": peak_rss_mb(one, model, tmp / f"{model}_m1"),
                 "peak_rss_mb_4x": peak_rss_mb(four, model, tmp / f"{model}_m4")}
            m["ratio_4x_over_1x"] = m["peak_rss_mb_4x"] / m["peak_rss_mb_1x"]
            results["memory"].append(m)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "extract_speed.json").write_text(json.dumps(results, indent=2, default=float))
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=1, default=float))
    return results


if __name__ == "__main__":
    main()
