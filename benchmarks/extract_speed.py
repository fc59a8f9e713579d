"""Extraction throughput on this machine, against model-only throughput and the naive peer loops.

    python -m benchmarks.extract_speed [--quick]

Measured in one run, on the real clips in ../shared/data (EMBEDTAG_SHARED moves it):
- end-to-end `extract` (decode in threads + batched inference + Parquet shards) for YAMNet and PANNs Cnn14,
  run twice in one process: the second run is the steady state (ratios use it), the first is kept as
  ``first_run_clips_per_s`` (it includes one-off warm-up costs);
- model-only throughput on pre-decoded audio, at the best batch size tried;
- the naive peers: `librosa.load` + `tensorflow_hub` YAMNet one file per call, and `librosa.load` +
  `panns_inference.AudioTagging.inference` one file per call;
- peak memory (max RSS of a fresh process) of `extract` over 1x and 4x the clips.
PANNs runs on a Cnn14 checkpoint with seeded random weights in the official format (the real one is not
reachable here); speed does not depend on the weight values. Results: benchmarks/results/extract_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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


def timed_extract(files_dir: Path, model: str, tmp: Path, **kw) -> dict:
    from embedtag.embeddings.pipeline import extract
    from embedtag.embeddings.registry import load_backbone

    bb = load_backbone(model, device="cpu")
    bb.embed([np.zeros(bb.sample_rate * 2, np.float32)])  # warm-up (graph tracing)
    runs = []
    # Twice into fresh stores: the first run in a process pays one-off costs (extract's own warm-up call,
    # buffers growing; ~0.3 s for YAMNet), the second is the steady state that model-only is also measured in.
    for _ in range(2):
        out = tmp / f"store_{model}_{time.time_ns()}"
        s = extract(files_dir, out, model=bb, progress=False, **kw)
        runs.append({"clips": s.n_stored, "audio_s": s.audio_s, "elapsed_s": s.elapsed_s,
                     "clips_per_s": s.clips_per_s, "realtime_factor": s.realtime_factor, "failed": s.n_failed})
    return {**runs[1], "first_run_clips_per_s": runs[0]["clips_per_s"]}


def model_only(files: list[Path], model: str, batch_sizes: list[int]) -> dict:
    """Throughput of backbone.embed on audio decoded beforehand (windows as the pipeline cuts them)."""
    from embedtag.embeddings.audio import load_audio, pad_to
    from embedtag.embeddings.pipeline import DEFAULT_WINDOW_S
    from embedtag.embeddings.registry import load_backbone

    bb = load_backbone(model, device="cpu")
    win = int(DEFAULT_WINDOW_S * bb.sample_rate)
    windows, audio_s = [], 0.0
    for f in files:
        x, _ = load_audio(f, bb.sample_rate)
        audio_s += x.size / bb.sample_rate
        windows += [pad_to(x[i:i + win], bb.min_samples) for i in range(0, x.size, win)]
    bb.warmup()  # the same one-off warm-up extract() does
    bb.embed(windows[:4])
    best = {}
    for bs in batch_sizes:
        t = time.perf_counter()
        for i in range(0, len(windows), bs):
            bb.embed(windows[i:i + bs])
        el = time.perf_counter() - t
        best[bs] = len(files) / el
    bs = max(best, key=best.get)
    return {"clips_per_s": best[bs], "best_batch_size": bs, "by_batch_size": best, "audio_s": audio_s}


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


def machine() -> dict:
    import torch

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "ram_gib": round(mem_gib, 1),
            "python": platform.python_version(), "torch": torch.__version__, "device": "cpu",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer clips (a smoke run, not for the README)")
    args = ap.parse_args(argv)
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
        for model, n, peer in (("yamnet", n_yam, "tensorflow_hub YAMNet, one file per call (librosa.load)"),
                               ("panns-cnn14", n_panns, "panns_inference.AudioTagging, one file per call (librosa.load)")):
            files = clip_files(n)
            d = link_dir(files, tmp / f"clips_{model}")
            e2e = timed_extract(d, model, tmp)
            mo = model_only(files, model, [8, 32, 64] if model == "yamnet" else [4, 16])
            p = peer_yamnet_hub(files) if model == "yamnet" else peer_panns_inference(files, ckpt)
            results[model] = {"clips": len(files), "end_to_end": e2e, "model_only": mo, "peer": {"what": peer, **p},
                              "e2e_over_model_only": e2e["clips_per_s"] / mo["clips_per_s"],
                              "e2e_over_peer": e2e["clips_per_s"] / p["clips_per_s"]}
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
