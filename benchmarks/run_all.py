"""Run the benchmark scripts and regenerate benchmarks/README.md from the JSON in benchmarks/results/.

    python -m benchmarks.run_all                   # every script, then the README (what `make bench` does)
    python -m benchmarks.run_all --skip-long       # leave out the hours-long ones (see LONG)
    python -m benchmarks.run_all --only search_real,heads_real
    python -m benchmarks.run_all --quick           # smoke run: quick settings, results not saved over the real ones
    python -m benchmarks.run_all --readme-only     # only re-render the README from the JSON there is
    python -m benchmarks.run_all --check           # exit 1 if the README does not match the JSON
    python -m benchmarks.run_all --only benchmark_reports   # only `embedtag benchmark` on every real dataset

``benchmark_reports`` (built in, no script) runs :func:`embedtag.benchmark.run_benchmark` on every labelled dataset in
../shared/data with each backbone of ``--backbones``, keeps the full reports under ``--reports-dir`` and the summary
rows in results/benchmark_reports.json.

Provenance: a run stamps every results JSON it (re)writes with ``"run": {"id", "commit", "script_elapsed_s"}`` and
records the run (start, end, commit, each script's status and time) in ``results/_runs.json``. The README header
says whether all tables come from one run, and ``--check`` fails when they do not (or when the README is stale).

Each script runs in its own process (``python -m benchmarks.<name>``), so one failing or running out of memory
does not stop the others; the summary says which failed. The README tables are rendered from the JSON files alone
(:func:`render_readme`), so the README always matches the results; a script may define
``markdown(result: dict) -> str`` to render its own JSON, otherwise a generic renderer tabulates it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
README = HERE / "README.md"

#: Benchmark scripts in the order they run (those missing from the checkout are skipped).
SCRIPTS = ["extract_speed", "ray_extract", "heads_speed", "heads_real", "search_speed", "search_real", "serve_load",
           "finetune_compare", "benchmark_reports"]
#: Steps run inside this process rather than as a script (name -> one-line description).
BUILTIN = {"benchmark_reports": "`embedtag benchmark` on every labelled dataset in ../shared/data: the best head "
                                "and noisy-label strategy, baselines, retrieval, throughput and memory per backbone."}
#: Scripts that take hours on a 2-core CPU; ``--skip-long`` leaves them out.
LONG = {"search_speed", "heads_speed", "finetune_compare"}
#: Arguments for ``--quick`` (a smoke run that must not overwrite the real results); None: no quick mode, skipped.
QUICK_ARGS: dict[str, list[str] | None] = {
    "extract_speed": ["--quick"],  # does not save in quick mode
    "ray_extract": ["--clips", "24", "--no-save"],
    "search_speed": ["--sizes", "20000", "--dims", "1024", "--no-save", "--flat-up-to", "0"],
    "search_real": ["--out", "/tmp/embedtag_search_real_quick.json"],
    "serve_load": ["--seconds", "3", "--clients", "1", "8", "--no-save"],
    "heads_speed": None,
    "heads_real": None,
    "finetune_compare": None,
    "benchmark_reports": None,
}
#: Scripts that need a GPU machine (run through benchmarks/gpu_check.sh, never by run_all on a CPU)
GPU_ONLY = {"gpu_check"}
#: significant digits of floats in the generic tables
DIGITS = 4
#: columns beyond this are dropped from a generic table (the JSON keeps everything)
MAX_COLUMNS = 16


# ------------------------------------------------------------------------------------------------ running
def available() -> list[str]:
    """Scripts present in benchmarks/, known ones first, then any other benchmark module with a main()."""
    names = [s for s in SCRIPTS if (HERE / f"{s}.py").is_file() or s in BUILTIN]
    for f in sorted(HERE.glob("*.py")):
        if f.stem not in names and f.stem not in ("__init__", "run_all", *GPU_ONLY) and not f.stem.startswith("_"):
            names.append(f.stem)
    return names


def run_script(name: str, args: list[str], timeout_s: float | None = None) -> dict:
    """Run ``python -m benchmarks.<name> *args`` from the repository root; returns status, seconds and rc."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *args]
    print(f"\n=== {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=REPO, timeout=timeout_s).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    return {"script": name, "args": args, "rc": rc, "elapsed_s": round(time.perf_counter() - start, 1)}


# ------------------------------------------------------------------------------------------------ provenance
RUNS = "_runs.json"  # the run log; a leading underscore keeps it out of the result sections


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def new_run() -> dict:
    """A run record: id (UTC start time), the commit measured ("-dirty" when the tree had local changes)."""
    commit = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    now = time.gmtime()
    return {"id": time.strftime("%Y%m%dT%H%M%SZ", now), "commit": commit,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", now), "finished": None, "scripts": {}}


def stamp(run: dict, status: dict, started_at: float, results_dir: Path = RESULTS) -> None:
    """Record one script's status in ``run``; if it succeeded and (re)wrote its JSON during the run, stamp the
    JSON with the run's id so the README can tell which run every table comes from."""
    name = status["script"]
    f = results_dir / f"{name}.json"
    fresh = f.is_file() and f.stat().st_mtime >= started_at
    entry = {"rc": status["rc"], "elapsed_s": status["elapsed_s"], "results": fresh}
    run["scripts"][name] = entry
    if status["rc"] != 0 or not fresh:
        return
    try:
        result = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        entry["results"] = False
        return
    if isinstance(result, dict):
        result["run"] = {"id": run["id"], "commit": run["commit"], "script_elapsed_s": status["elapsed_s"]}
        f.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def save_run(run: dict, results_dir: Path = RESULTS) -> None:
    """Add ``run`` to the run log, keeping only runs that some result JSON still comes from."""
    log = load_runs(results_dir)
    log[run["id"]] = run
    used = set(result_runs(results_dir).values()) | {run["id"]}
    log = {k: v for k, v in log.items() if k in used}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / RUNS).write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")


def load_runs(results_dir: Path = RESULTS) -> dict:
    try:
        log = json.loads((results_dir / RUNS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return log if isinstance(log, dict) else {}


def result_files(results_dir: Path = RESULTS) -> list[Path]:
    """The results JSON files (not the run log), in run order."""
    files = [f for f in results_dir.glob("*.json") if not f.name.startswith("_")] if results_dir.is_dir() else []
    order = {s: i for i, s in enumerate(SCRIPTS)}
    return sorted(files, key=lambda f: (order.get(f.stem, len(order)), f.stem))


def result_runs(results_dir: Path = RESULTS) -> dict[str, str | None]:
    """Each results file's run id (None: not written by a ``run_all`` run)."""
    out = {}
    for f in result_files(results_dir):
        try:
            r = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            r = None
        out[f.stem] = (r.get("run") or {}).get("id") if isinstance(r, dict) else None
    return out


def provenance(results_dir: Path = RESULTS) -> str:
    """The README paragraph saying which run(s) the tables come from."""
    ids = result_runs(results_dir)
    if not ids:
        return ""
    log = load_runs(results_dir)
    distinct = sorted({i for i in ids.values() if i})
    unstamped = [n for n, i in ids.items() if not i]
    if len(distinct) == 1 and not unstamped:
        r = log.get(distinct[0], {"id": distinct[0]})
        lines = [f"**All tables below come from one run**: `{r['id']}` of commit `{r.get('commit', '?')}`, "
                 f"started {r.get('started', '?')}, finished {r.get('finished') or '?'}."]
        scripts = r.get("scripts") or {}
        if scripts:
            lines += ["", "| script | status | time (s) |", "|---|---|---|"]
            lines += [f"| {n} | {'ok' if e.get('rc') == 0 else 'failed (' + str(e.get('rc')) + ')'} | "
                      f"{_fmt(e.get('elapsed_s'))} |" for n, e in scripts.items()]
        return "\n".join(lines) + "\n"
    parts = [f"`{n}`: run `{i}`" if i else f"`{n}`: no run stamp" for n, i in ids.items()]
    return ("**The tables below do not all come from one run** (" + "; ".join(parts) + "); regenerate them "
            "together with `make bench`.\n")


def one_run(results_dir: Path = RESULTS) -> bool:
    ids = list(result_runs(results_dir).values())
    return bool(ids) and None not in ids and len(set(ids)) == 1


# ------------------------------------------------------------------------------------------------ rendering
def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:  # NaN
            return "–"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return str(int(v)) if v == int(v) else f"{v:.{DIGITS}g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list):
        if all(not isinstance(x, (dict, list)) for x in v):
            return ", ".join(_fmt(x) for x in v)
        return json.dumps(v, separators=(",", ":"))
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v).replace("|", "\\|").replace("\n", " ")


def _flatten(rows: list[dict]) -> list[dict]:
    """Flatten nested dicts to dotted keys when every row's dict under that key has the same keys (structured
    metrics, e.g. ``none.precision_at_k``); free-form ones (e.g. head ``params``) stay one ``k=v`` column."""
    out = [dict(r) for r in rows]
    for _ in range(2):  # two levels deep
        keys = list(dict.fromkeys(k for r in out for k, v in r.items() if isinstance(v, dict)))
        changed = False
        for k in keys:
            shapes = {tuple(r[k]) for r in out if isinstance(r.get(k), dict)}
            if len(shapes) != 1 or not next(iter(shapes)):
                continue
            changed = True
            for r in out:
                v = r.pop(k, None)
                for sub in next(iter(shapes)):
                    r[f"{k}.{sub}"] = v.get(sub) if isinstance(v, dict) else None
        if not changed:
            break
    return out


def table(rows: list[dict], first: str | None = None) -> str:
    """Markdown table of a list of dicts (union of their keys, in first-seen order; see :func:`_flatten`)."""
    flat = _flatten(rows)
    cols: list[str] = []
    for r in flat:
        cols += [k for k in r if k not in cols]
    if first is not None:
        cols = [first] + [c for c in cols if c != first]
    dropped = cols[MAX_COLUMNS:]
    cols = cols[:MAX_COLUMNS]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in flat]
    if dropped:
        lines.append(f"\n(columns not shown: {', '.join(dropped)}; see the JSON)")
    return "\n".join(lines)


def generic_markdown(result: dict) -> str:
    """Tables of any results JSON: top-level scalars as a setup list, each list of records as a table, each dict
    of records as a table with one row per key, and nested sections recursively (one heading level down)."""
    return _generic(result, level=3)


def _generic(d: dict, level: int) -> str:
    parts, setup = [], []
    # sibling records with the same keys (e.g. {"yamnet": {...}, "panns-cnn14": {...}}) make one table
    groups: dict[tuple, list[str]] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and not all(isinstance(x, dict) for x in v.values()):
            groups.setdefault(tuple(v), []).append(k)
    grouped = {k: names for names in groups.values() if len(names) > 1 for k in names}
    done: set = set()
    for k, v in d.items():
        if k in done:
            continue
        if k in grouped:
            names = grouped[k]
            done.update(names)
            parts.append(f"{'#' * level} {', '.join(names)}\n\n"
                         + table([{"name": n, **d[n]} for n in names], first="name"))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            parts.append(f"{'#' * level} {k}\n\n{table(v)}")
        elif isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            rows = [{"name": name, **x} for name, x in v.items()]
            parts.append(f"{'#' * level} {k}\n\n{table(rows, first='name')}")
        elif isinstance(v, dict) and v and any(isinstance(x, (dict, list)) for x in v.values()) and level < 5:
            parts.append(f"{'#' * level} {k}\n\n{_generic(v, level + 1)}")
        elif k != "benchmark":  # the section heading already names it
            setup.append(f"- **{k}**: {_fmt(v)}")
    return "\n\n".join(["\n".join(setup)] + parts if setup else parts)


def _docline(name: str) -> str:
    """First line of a script's docstring, read without importing it."""
    f = HERE / f"{name}.py"
    if name in BUILTIN:
        return BUILTIN[name]
    if not f.is_file():
        return ""
    try:
        doc = ast.get_docstring(ast.parse(f.read_text(encoding="utf-8"))) or ""
    except SyntaxError:
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _captured(fn, *args) -> str:
    """What a script's table printer prints, as a string."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        fn(*args)
    return buf.getvalue().strip()


def _setup_lines(result: dict) -> str:
    return "\n".join(f"- **{k}**: {_fmt(v)}" for k, v in result.items()
                     if k != "benchmark" and not isinstance(v, (dict, list)))


def _finetune_compare_markdown(result: dict) -> str:
    """finetune_compare.json: per dataset and setting, frozen-embedding heads beside fine-tuned networks."""
    lines = ["| run | clips | labels | folds | model | out-of-fold lwlrap | per-fold lwlrap | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, d in (result.get("datasets") or {}).items():
        fe = d.get("frozen_embedding") or {}
        for head, v in (fe.get("heads") or {}).items():
            lines.append(f"| {name} | {d.get('clips')} | {d.get('labels')} | {d.get('folds')} | frozen "
                         f"{fe.get('backbone')} embeddings + {head} | {_fmt(v.get('cv_lwlrap'))} | "
                         f"{_fmt(v.get('fold_lwlrap'))} | {_fmt(v.get('train_s'))} |")
        for setting, v in (d.get("finetuned") or {}).items():
            epochs = (v.get("settings") or {}).get("epochs")
            lines.append(f"| {name} | {d.get('clips')} | {d.get('labels')} | {d.get('folds')} | fine-tuned "
                         f"{(v.get('settings') or {}).get('backbone', '')}, {setting} settings, {_fmt(epochs)} epochs, "
                         f"last epoch | {_fmt(v.get('cv_lwlrap_last_epoch'))} | {_fmt(v.get('fold_lwlrap'))} | "
                         f"{_fmt(v.get('elapsed_s'))} |")
    notes = sorted({str(d.get("note")) for d in (result.get("datasets") or {}).values() if d.get("note")})
    return "\n".join(lines) + ("\n\n" + "\n".join(f"Note: {n}." for n in notes) if notes else "")


def _script_markdown(name: str):
    """How to render a script's JSON: its own ``markdown(result) -> str`` if it defines one, else its own table
    printer where its signature is known, else a renderer here; None means the generic tables."""
    if name == "finetune_compare":
        return _finetune_compare_markdown
    if not (HERE / f"{name}.py").is_file():
        return None
    try:
        source = (HERE / f"{name}.py").read_text(encoding="utf-8")
        if "def markdown(" in source:
            return getattr(importlib.import_module(f"benchmarks.{name}"), "markdown", None)
        if name == "heads_real" and "def print_tables(result" in source:
            fn = importlib.import_module(f"benchmarks.{name}").print_tables
            return lambda r: "\n\n".join(x for x in (_setup_lines(r), _captured(fn, r)) if x)
        if name == "search_speed" and "def print_table(runs" in source:
            fn = importlib.import_module(f"benchmarks.{name}").print_table
            return lambda r: "\n\n".join(x for x in (_setup_lines(r), _captured(fn, r["runs"])) if x)
    except Exception:  # a script that cannot import falls back to the generic tables
        return None
    return None


def render_section(name: str, result: dict) -> str:
    """Markdown section of one results JSON."""
    title = _docline(name) or f"{name}"
    cmd = (f"python -m benchmarks.{name}" if (HERE / f"{name}.py").is_file() else
           f"python -m benchmarks.run_all --only {name}" if name in BUILTIN else "(no script in benchmarks/)")
    render = _script_markdown(name)
    body = None
    if render is not None:
        try:
            body = render(result)
        except Exception as exc:  # fall back rather than lose the section
            body = f"(the script's markdown() failed: {type(exc).__name__}; generic tables below)\n\n" + \
                generic_markdown(result)
    if body is None:
        body = generic_markdown(result)
    return (f"## {name}\n\n{title}\n\nResults: [`results/{name}.json`](results/{name}.json); reproduce with "
            f"`{cmd}`.\n\n{body}\n")


def render_readme(results_dir: Path = RESULTS) -> str:
    """The whole benchmarks/README.md from the JSON files in ``results_dir`` (sorted by the run order)."""
    files = result_files(results_dir)
    head = ("# embedtag benchmarks\n\n"
            "Generated by `python -m benchmarks.run_all` (`make bench`) from the JSON in `benchmarks/results/`; do "
            "not edit by hand: re-render with `python -m benchmarks.run_all --readme-only`. Every number below is "
            "in the JSON of its section, with the machine and date it was measured on. Speed numbers are from "
            "benchmarks, never from tests. End-to-end reports on one dataset (profile, heads, strategies, "
            "retrieval, references) come from `embedtag benchmark DATA --out DIR`.\n")
    sections = []
    for f in files:
        try:
            result = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            sections.append(f"## {f.stem}\n\n(unreadable JSON: {exc})\n")
            continue
        if not isinstance(result, dict):
            result = {"results": result}
        sections.append(render_section(f.stem, result))
    missing = [s for s in available() if not (results_dir / f"{s}.json").is_file()]
    tail = ""
    if missing:
        tail = "\n## Not yet run\n\n" + "\n".join(f"- `{s}`: {_docline(s)}" for s in missing) + "\n"
    if not (results_dir / "gpu_check.json").is_file():  # GPU runs need a GPU machine, so run_all never makes them
        tail += ("\n## GPU\n\nGPU numbers are not measured yet: no run of `benchmarks/gpu_check.sh` (< 8 minutes on "
                 "one GPU; fp16 autocast vs fp32, batch sizes, decoding workers, fine-tune AMP vs fp32, peak GPU "
                 "memory) has been committed to `results/gpu_check.json`. Every number above is from a CPU. A session "
                 "lent a GPU machine runs `bash benchmarks/gpu_wheels.sh` here (the audio packages that machine's "
                 "image lacks, into `.whl/`), then on the machine, carrying `.whl`: `bash benchmarks/gpu_check.sh "
                 "--out $OUT/gpu_check.json`, and commits that file as `results/gpu_check.json`.\n")
    prov = provenance(results_dir)
    return head + "\n" + (prov + "\n" if prov else "") + "\n".join(sections) + tail


def write_readme(path: Path = README, results_dir: Path = RESULTS) -> Path:
    path.write_text(render_readme(results_dir), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ reports
def shared_datasets(shared: Path) -> list[Path]:
    """Labelled audio datasets (labels.csv + audio/) under ``shared/data``."""
    data = shared / "data"
    if not data.is_dir():
        return []
    return [d for d in sorted(data.iterdir()) if (d / "labels.csv").is_file() and (d / "audio").is_dir()]


def run_reports(shared: Path, reports_dir: Path, backbones: list[str], heads: str, folds: int) -> dict:
    """``run_benchmark`` on every shared dataset x backbone; returns status like :func:`run_script` and writes
    results/benchmark_reports.json with one summary row per run."""
    import os

    from embedtag.report import machine_info, versions

    os.environ.setdefault("EMBEDTAG_WEIGHTS_DIR", str(shared / "models"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()
    rows, failed = [], 0
    datasets = shared_datasets(shared)
    for d in datasets:
        for bb in backbones:
            print(f"\n=== embedtag benchmark {d} --backbone {bb} --heads {heads} --folds {folds}", flush=True)
            out = reports_dir / f"{d.name}__{bb}"
            shutil.rmtree(out, ignore_errors=True)  # a fresh store: throughput is measured, not resumed
            # its own process: one run's memory is its own peak, and a crash loses only that run
            rc = subprocess.run([sys.executable, "-m", "embedtag", "benchmark", str(d), "--out", str(out),
                                 "--backbone", bb, "--heads", heads, "--folds", str(folds), "-q"], cwd=REPO).returncode
            try:
                r = json.loads((out / "results.json").read_text(encoding="utf-8"))
                if rc != 0:
                    raise RuntimeError(f"exit code {rc}")
            except (OSError, ValueError, RuntimeError) as exc:
                failed += 1
                rows.append({"dataset": d.name, "backbone": bb, "error": f"{type(exc).__name__}: {exc}"[:200]})
                continue
            h, ret, ext = r["heads"], r["retrieval"], r["extract"]
            ok = h.get("status") == "ok"
            p5 = (dict(zip(ret["k"], ret["precision_at_k"])).get(5) if ret.get("status") == "ok" else None)
            rows.append({
                "dataset": d.name, "backbone": bb, "clips": r["dataset"]["n_clips"], "labels": r["dataset"]["n_labels"],
                "best head": f"{h['best']['head']} / {h['best']['strategy']}" if ok else None,
                "lwlrap": h["best"]["lwlrap"] if ok else None, "accuracy": h["best"].get("accuracy") if ok else None,
                "prior lwlrap": h["baselines"]["prior"] if ok else None,
                "zero-shot lwlrap": h["baselines"]["zero_shot"] if ok else None,
                # every head's own column (auto beside the single heads it chooses among)
                **{f"{hd} lwlrap": next((x["lwlrap"] for x in h.get("rows", []) if x["head"] == hd), None)
                   for hd in heads.split(",")},
                "P@5": p5, "extract clips/s": ext.get("clips_per_s"), "peak RSS MiB": r["resources"]["peak_rss_mib"],
                "flagged clips": sum(r["profile"].get("flag_counts", {}).values()) if r["profile"].get("status") == "ok"
                else None})
    doc = {"benchmark": "benchmark_reports", "heads": heads, "folds": folds,
           "protocol": f"{folds}-fold multi-label stratified CV (seed 0) of each head on frozen mean-pooled clip "
                       "embeddings; lwlrap of the best head; P@5: leave-one-out cosine retrieval",
           "machine": machine_info(), "versions": versions(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "note": "each run is its own `embedtag benchmark` process (peak RSS is that process's); extraction "
                   "throughput excludes model loading; 2-core CPU shared with other work",
           "runs": rows}
    if rows:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "benchmark_reports.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return {"script": "benchmark_reports", "args": backbones, "rc": 1 if failed or not datasets else 0,
            "elapsed_s": round(time.perf_counter() - start, 1)}


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated scripts to run (default: all present)")
    ap.add_argument("--skip", default="", help="comma-separated scripts not to run")
    ap.add_argument("--skip-long", action="store_true", help=f"do not run {', '.join(sorted(LONG))}")
    ap.add_argument("--quick", action="store_true", help="smoke run with quick settings; real results untouched")
    ap.add_argument("--readme-only", action="store_true", help="do not run anything; re-render the README")
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md does not match the JSON")
    ap.add_argument("--timeout-s", type=float, default=None, help="per-script time limit")
    ap.add_argument("--list", action="store_true", help="list the scripts and exit")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="real assets (benchmark_reports)")
    ap.add_argument("--backbones", default="yamnet,efficientat-mn04", help="benchmark_reports: backbones")
    ap.add_argument("--heads", default="logreg,mlp,auto", help="benchmark_reports: heads")
    ap.add_argument("--folds", type=int, default=5, help="benchmark_reports: folds")
    ap.add_argument("--reports-dir", type=Path, default=Path("/tmp/embedtag_benchmark_reports"),
                    help="benchmark_reports: where the full reports go")
    args = ap.parse_args(argv)
    names = available()
    if args.list:
        for n in names:
            print(f"{n:18s} {'(long) ' if n in LONG else ''}{_docline(n)}")
        return 0
    if args.check:
        ok = README.is_file() and README.read_text(encoding="utf-8") == render_readme()
        print("benchmarks/README.md matches the JSON" if ok else
              "benchmarks/README.md is out of date: run python -m benchmarks.run_all --readme-only")
        single = one_run()
        print("the results come from one run" if single else
              "the results do not all come from one run: " +
              ", ".join(f"{n}={i or 'unstamped'}" for n, i in result_runs().items()) + " (run make bench)")
        return 0 if ok and single else 1
    runs = []
    record = None if args.readme_only or args.quick else new_run()
    if not args.readme_only:
        only = [s for s in args.only.split(",") if s]
        unknown = [s for s in only if s not in names]
        if unknown:
            ap.error(f"unknown script(s): {', '.join(unknown)}; present: {', '.join(names)}")
        skip = set(s for s in args.skip.split(",") if s) | (LONG if args.skip_long else set())
        for name in (only or names):
            if name in skip:
                print(f"skipped {name}")
                continue
            extra = []
            if args.quick:
                extra = QUICK_ARGS.get(name)
                if extra is None:
                    print(f"skipped {name} (no quick mode that leaves the real results alone)")
                    continue
            started_at = time.time() - 1  # file mtimes may be coarser than the clock
            if name == "benchmark_reports":
                runs.append(run_reports(args.shared, args.reports_dir, [b for b in args.backbones.split(",") if b],
                                        args.heads, args.folds))
            else:
                runs.append(run_script(name, extra, args.timeout_s))
            if record is not None:
                stamp(record, runs[-1], started_at)
                save_run(record)  # after every script: an interrupted run still says what it measured
    if record is not None and runs:
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        save_run(record)
    if not args.quick:
        print(f"\nwrote {write_readme().relative_to(REPO)}")
    for r in runs:
        print(f"{r['script']:18s} {'ok' if r['rc'] == 0 else 'FAILED (' + str(r['rc']) + ')'} in {r['elapsed_s']} s")
    return 1 if any(r["rc"] != 0 for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
