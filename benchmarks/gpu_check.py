"""GPU check: what the CUDA paths (fp16 autocast, pinned memory, channels-last) actually deliver, in one JSON.

    benchmarks/gpu_check.sh                       # on a GPU machine: < 8 minutes, writes results/gpu_check.json
    python -m benchmarks.gpu_check --smoke --out /tmp/g.json   # seconds, on CPU too (what the test runs)

For every PyTorch backbone (EfficientAT mn04/mn10/mn40, PANNs Cnn14, yamnet-torch, EfficientAT dymn04):
- model-only clips/s on pre-made windows (1 s and 10 s), for several batch sizes, under fp16 autocast and in fp32,
  with the peak GPU memory of each configuration;
- end to end (``extract``: decoding threads, batching, store writes) clips/s on WAV files of short (1 s) and long
  (30 s, three windows) clips for several decoding worker counts, next to the model-only figure of the same batch
  size (``e2e_over_model_only``);
and fine-tune steps/s of the EfficientAT network (FinetuneNet) with AMP (autocast + GradScaler) vs fp32.

Weights are seeded random tensors of each real architecture in its official file format (speed does not depend on
the values, and a GPU machine may not have the real files); audio is synthetic (noise + tones). Each backbone's
results are written as soon as they exist, and configurations still to run when ``--budget-s`` is spent are
recorded as skipped, so a run cut short still leaves valid JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ALL_MODELS = ["efficientat-mn04", "efficientat-mn10", "efficientat-mn40", "panns-cnn14", "yamnet-torch",
              "efficientat-dymn04"]


# ------------------------------------------------------------------------------------------------ set-up
def make_weights(model: str, mirror: Path) -> Path:
    """A seeded random checkpoint of ``model``'s real architecture, in the official format, under ``mirror``."""
    import torch

    from embedtag.embeddings.registry import get_spec

    spec = get_spec(model)
    path = mirror / spec.weights.family / spec.weights.relpath
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if spec.family == "efficientat" and "dymn" in model:
        from embedtag.embeddings.backbones.efficientat_dymn import dymn_model

        torch.save(dymn_model(spec.options["width_mult"], 527).state_dict(), path)
    elif spec.family == "efficientat":
        from embedtag.embeddings.backbones.efficientat import mn_model

        torch.save(mn_model(spec.options["width_mult"], 527).state_dict(), path)
    elif spec.family == "panns":
        from embedtag.embeddings.backbones.panns import (
            PANNS_CONFIG,
            import_panns_models,
        )

        torch.save({"model": import_panns_models().Cnn14(**PANNS_CONFIG).state_dict()}, path)
    elif model == "yamnet-torch":
        from safetensors.torch import save_file

        from embedtag.embeddings.backbones.yamnet_torch import YamnetNet

        save_file({k: v.contiguous() for k, v in YamnetNet().state_dict().items()}, str(path))
    else:
        raise ValueError(f"no random-weights recipe for {model}")
    return path


def synth(n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sample_rate
    tone = np.sin(2 * np.pi * rng.uniform(100, 4000) * t)
    return (0.1 * rng.standard_normal(n) + 0.3 * tone).astype(np.float32)


def write_clips(folder: Path, count: int, duration_s: float, seed: int) -> Path:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        sf.write(folder / f"clip{i:04d}.wav", synth(int(duration_s * 44100), 44100, rng), 44100, subtype="PCM_16")
    return folder


# ------------------------------------------------------------------------------------------------ measures
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mib(device: str) -> float | None:
    if device.startswith("cuda"):
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return None


def model_only(bb, windows: list[np.ndarray], batch_size: int, fp16: bool) -> dict:
    """clips/s of ``bb.embed`` on windows made beforehand (one window = one clip here)."""
    bb.mixed_precision = fp16
    bb.embed(windows[:batch_size])  # warm-up: cuDNN algorithm choice, allocator growth
    _sync(bb.device)
    _reset_peak(bb.device)
    t = time.perf_counter()
    for i in range(0, len(windows), batch_size):
        bb.embed(windows[i:i + batch_size])
    _sync(bb.device)
    el = time.perf_counter() - t
    return {"batch_size": batch_size, "fp16_autocast": fp16, "clips_per_s": round(len(windows) / el, 2),
            "peak_gpu_mib": _peak_mib(bb.device)}


def end_to_end(bb, folder: Path, out: Path, batch_size: int, workers: int) -> dict:
    from embedtag.embeddings.pipeline import extract

    bb.mixed_precision = True
    _reset_peak(bb.device)
    s = extract(folder, out, model=bb, batch_size=batch_size, workers=workers, progress=False)
    return {"batch_size": batch_size, "workers": workers, "clips": s.n_stored, "clips_per_s": round(s.clips_per_s, 2),
            "realtime_factor": round(s.realtime_factor, 1), "peak_gpu_mib": _peak_mib(bb.device)}


def finetune_steps(device: str, amp: bool, batch_size: int, steps: int, crop_s: float) -> dict:
    import torch

    from embedtag.embeddings.backbones._torch_util import autocast
    from embedtag.finetune.model import FinetuneNet

    torch.manual_seed(0)
    net = FinetuneNet(n_labels=80).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.startswith("cuda"))
    x = torch.randn(batch_size, int(crop_s * 32000), device=device) * 0.1
    y = (torch.rand(batch_size, 80, device=device) < 0.05).float()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    step()  # warm-up
    _sync(device)
    _reset_peak(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    el = time.perf_counter() - t
    return {"amp": amp, "batch_size": batch_size, "crop_s": crop_s, "steps": steps,
            "steps_per_s": round(steps / el, 3), "peak_gpu_mib": _peak_mib(device)}


# ------------------------------------------------------------------------------------------------ README
def markdown(result: dict) -> str:
    """benchmarks/README.md section (run_all calls this when results/gpu_check.json exists)."""
    m = result.get("machine", {})
    lines = [(f"- **machine**: {m.get('gpu', m.get('device'))}, torch {m.get('torch')}, CUDA {m.get('cuda')}, "
              f"{m.get('cpu_cores')} CPU cores, {m.get('date')}"), f"- **note**: {result.get('note', '')}", "",
             "| backbone | set | measure | batch | fp16 autocast | workers | clips/s | e2e / model-only "
             "| peak GPU MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in result.get("backbones", {}).items():
        if "skipped" in entry:
            lines.append(f"| {name} | | skipped: {entry['skipped']} | | | | | | |")
            continue
        for key, runs in entry.items():
            measure, _, set_name = key.rpartition("_")
            for r in runs:
                lines.append(f"| {name} | {set_name} | {measure.replace('_', ' ')} | {r['batch_size']} | "
                             f"{r.get('fp16_autocast', True)} | {r.get('workers', '')} | {r['clips_per_s']} | "
                             f"{r.get('e2e_over_model_only', '')} | {r.get('peak_gpu_mib')} |")
    ft = result.get("finetune", {})
    if ft:
        lines += ["", "| fine-tune (FinetuneNet mn04) | batch | crop s | steps/s | peak GPU MiB |",
                  "|---|---|---|---|---|"]
        for k in ("amp", "fp32"):
            r = ft.get(k, {})
            if "steps_per_s" in r:
                lines.append(f"| {k} | {r['batch_size']} | {r['crop_s']} | {r['steps_per_s']} | {r['peak_gpu_mib']} |")
        if "amp_speedup" in ft:
            lines.append(f"\nAMP speed-up: {ft['amp_speedup']}x")
    if result.get("skipped"):
        lines += ["", "Skipped (time budget): " + "; ".join(result["skipped"])]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ driver
def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
            "cpu_cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few clips and steps: checks the script, on CPU too")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check.json"))
    ap.add_argument("--models", default=None, help=f"comma-separated (default: {','.join(ALL_MODELS)}; smoke: mn04, "
                                                   "yamnet-torch)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    args = ap.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    smoke = args.smoke
    models = args.models.split(",") if args.models else (["efficientat-mn04", "yamnet-torch"] if smoke else ALL_MODELS)
    sizes = {"n_short": 4 if smoke else 512, "n_long": 2 if smoke else 64,
             "batch_sizes": [2] if smoke else [8, 32, 128], "workers": [1] if smoke else [1, 4, 8],
             "ft_batch": 2 if smoke else 64, "ft_steps": 2 if smoke else 30, "ft_crop_s": 1.0 if smoke else 10.0}
    out_path = Path(args.out)
    result: dict = {"machine": machine(device), "smoke": smoke, "sizes": sizes,
                    "note": "seeded random weights of each real architecture (official file formats); synthetic "
                            "audio; fp16 autocast applies on CUDA only (on CPU both precisions run fp32)",
                    "backbones": {}, "finetune": {}, "skipped": []}

    def save() -> None:
        result["elapsed_s"] = round(time.perf_counter() - start, 1)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out_path.with_name(out_path.name + ".tmp")
        tmp_out.write_text(json.dumps(result, indent=2))
        os.replace(tmp_out, out_path)

    def in_budget(what: str) -> bool:
        if time.perf_counter() - start > args.budget_s:
            result["skipped"].append(f"{what}: time budget spent")
            return False
        return True

    tmp = Path(tempfile.mkdtemp(prefix="embedtag-gpu-check-"))
    old_env = {k: os.environ.get(k) for k in ("EMBEDTAG_WEIGHTS_DIR", "EMBEDTAG_HOME", "EMBEDTAG_OFFLINE")}
    os.environ.update(EMBEDTAG_WEIGHTS_DIR=str(tmp / "mirror"), EMBEDTAG_HOME=str(tmp / "home"), EMBEDTAG_OFFLINE="1")
    try:
        try:
            audio = {"short": write_clips(tmp / "short", sizes["n_short"], 1.0, 1),
                     "long": write_clips(tmp / "long", sizes["n_long"], 30.0, 2)}
        except ImportError as exc:
            audio = {}
            result["skipped"].append(f"end-to-end: {exc}")
        from embedtag.embeddings.registry import load_backbone

        for model in models:
            if not in_budget(model):
                continue
            entry: dict = {}
            result["backbones"][model] = entry
            try:
                make_weights(model, tmp / "mirror")
                bb = load_backbone(model, device=device)
            except Exception as exc:  # noqa: BLE001 - a backbone that cannot run here is recorded, the rest go on
                entry["skipped"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                save()
                continue
            rng = np.random.default_rng(0)
            best: dict[str, int] = {}
            for set_name, window_s, n in (("short", 1.0, sizes["n_short"]), ("long", 10.0, sizes["n_long"])):
                windows = [synth(int(window_s * bb.sample_rate), bb.sample_rate, rng) for _ in range(n)]
                runs = []
                for bs in sizes["batch_sizes"]:
                    for fp16 in (True, False):
                        if in_budget(f"{model} model-only {set_name} bs={bs} fp16={fp16}"):
                            runs.append(model_only(bb, windows, bs, fp16))
                entry[f"model_only_{set_name}"] = runs
                fp16_runs = [r for r in runs if r["fp16_autocast"]]
                if fp16_runs:
                    best[set_name] = max(fp16_runs, key=lambda r: r["clips_per_s"])["batch_size"]
                save()
            for set_name, folder in audio.items():
                if set_name not in best:
                    continue
                mo = next(r["clips_per_s"] for r in entry[f"model_only_{set_name}"]
                          if r["fp16_autocast"] and r["batch_size"] == best[set_name])
                runs = []
                for w in sizes["workers"]:
                    if in_budget(f"{model} e2e {set_name} workers={w}"):
                        r = end_to_end(bb, folder, tmp / "stores" / f"{model}_{set_name}_{w}", best[set_name], w)
                        # long clips are three 10 s windows: compare windows/s with model-only windows/s
                        per_clip = 3 if set_name == "long" else 1
                        r["e2e_over_model_only"] = round(r["clips_per_s"] * per_clip / mo, 3)
                        runs.append(r)
                entry[f"end_to_end_{set_name}"] = runs
                save()
            del bb
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        for amp in (True, False):
            if in_budget(f"finetune amp={amp}"):
                try:
                    result["finetune"]["amp" if amp else "fp32"] = finetune_steps(
                        device, amp, sizes["ft_batch"], sizes["ft_steps"], sizes["ft_crop_s"])
                except Exception as exc:  # noqa: BLE001 - recorded; the JSON stays valid
                    result["finetune"]["amp" if amp else "fp32"] = {"skipped": f"{type(exc).__name__}: {exc}"[:300]}
                save()
        if device.startswith("cuda") and "amp" in result["finetune"] and "fp32" in result["finetune"]:
            a, f = result["finetune"]["amp"], result["finetune"]["fp32"]
            if "steps_per_s" in a and "steps_per_s" in f:
                result["finetune"]["amp_speedup"] = round(a["steps_per_s"] / f["steps_per_s"], 3)
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)
        save()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
