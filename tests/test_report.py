"""`embedtag benchmark` and its report: real audio, real YAMNet, the HTML opened in headless Chromium."""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, IN_CI, require, run_cli
from embedtag.report import REFERENCES, not_run, rank_among_references, write_report

GOLDLAB = "goldlab_oddball_novel_sounds"
SECTIONS = ["Summary", "References", "Dataset profile", "Heads and noisy-label strategies", "Per-class lwlrap",
            "Most-confused label pairs", "Per-class average precision and precision-recall curves", "Confusion matrix",
            "Score distributions", "Retrieval", "Fine-tuning", "Throughput and memory", "Provenance"]
PLOTS = {"duration_histogram.png", "lwlrap_by_strategy.png", "per_class_lwlrap.png", "confused_pairs.png",
         "average_precision.png", "pr_curves.png", "confusion_matrix.png", "score_distribution.png",
         "retrieval_precision_at_k.png", "throughput_memory.png"}


def goldlab_rows():
    src = require(DATA / GOLDLAB)
    return src, list(csv.DictReader(open(src / "labels.csv", encoding="utf-8")))


def make_esc50_layout(root):
    """The ESC-50 layout (meta/esc50.csv + audio/) over the real goldlab clips, five folds."""
    src, rows = goldlab_rows()
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    cats = sorted({r["labels"] for r in rows})
    with open(root / "meta" / "esc50.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category"])
        for i, r in enumerate(rows):
            (root / "audio" / r["fname"]).symlink_to(src / "audio" / r["fname"])
            w.writerow([r["fname"], i % 5 + 1, cats.index(r["labels"]), r["labels"]])


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    msg = "headless Chromium is not installed (Debian/Ubuntu: apt-get install -y chromium)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


# Collects load errors from the start and, once everything has loaded, writes what the page looks like into the
# DOM for --dump-dom to return: images that did not decode, and where each section heading sits.
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(e.message || ('failed to load ' + ((e.target && (e.target.src || e.target.href)) \
|| '?')).slice(0, 80));
}, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = {images: imgs.length,
             broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length,
             sections: Array.prototype.map.call(document.querySelectorAll('section > h2'), function (h) {
               return [h.textContent, Math.round(h.getBoundingClientRect().top)]; }),
             height: document.documentElement.scrollHeight, errors: window.__errors};
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def open_in_chromium(report_html, tmp_path) -> tuple[dict, np.ndarray]:
    """Open the report in headless Chromium: the probe's findings and a full-page screenshot (RGB array)."""
    exe = chromium()
    page = tmp_path / "probe.html"
    page.write_text(report_html.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1),
                    encoding="utf-8")
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
             "--no-first-run", "--disable-extensions"]
    dom = subprocess.run(flags + ["--virtual-time-budget=10000", "--window-size=1280,900", "--dump-dom",
                                  page.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"the page did not finish loading in Chromium: {dom.stderr[-2000:]}"
    probe = json.loads(html.unescape(m.group(1)))
    height = min(int(probe["height"]) + 50, 16000)
    shot = tmp_path / "screenshot.png"
    subprocess.run(flags + [f"--window-size=1280,{height}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, text=True, timeout=120, check=True)
    from PIL import Image

    return probe, np.asarray(Image.open(shot).convert("RGB"))


# ------------------------------------------------------------------------------------------------ unit
def test_references_and_ranking():
    esc = {r["name"]: r["value"] for r in REFERENCES if r["dataset"] == "esc50"}
    assert sorted(esc.values()) == [0.7505, 0.813, 0.8375, 0.9085, 0.9665]
    fsd = sorted(r["value"] for r in REFERENCES if r["dataset"] == "fsdkaggle2019")
    assert fsd == [0.537, 0.546, 0.76]
    assert all(r["url"].startswith("https://") and r["source"] for r in REFERENCES)
    assert rank_among_references(0.85, "esc50", "accuracy").startswith("accuracy 0.8500 would rank #3 of 6")
    assert "above every reference" in rank_among_references(0.99, "esc50", "accuracy")
    assert "#4 of 4" in rank_among_references(0.5, "fsdkaggle2019", "lwlrap")
    assert rank_among_references(0.5, "folder", "lwlrap") is None


def test_stages_that_did_not_run_say_why(tmp_path):
    results = {"dataset": {"name": "x", "path": "/x", "layout": "folder", "n_clips": 3, "n_labels": 2},
               "provenance": {"backbone": "yamnet", "seed": 0},
               "profile": not_run("profile failed: boom"), "extract": not_run("no weights"),
               "heads": not_run("no embeddings (no weights)"), "retrieval": not_run("no embeddings (no weights)")}
    paths = write_report(results, tmp_path)
    md = paths["markdown"].read_text()
    assert "not run: profile failed: boom" in md and "not run: no embeddings (no weights)" in md
    assert "not run: not requested" in md  # fine-tuning absent
    assert all(f"## {s}" in md for s in SECTIONS)
    assert paths["plots"] == []


# ------------------------------------------------------------------------------------------------ end to end
def test_benchmark_known_dataset_missing_then_present(tmp_path, capsys, monkeypatch, shared_models):
    """`embedtag benchmark esc50` says what to download and where; once it is there the same command runs and
    the report, opened in headless Chromium, shows every section and plot."""
    monkeypatch.setenv("EMBEDTAG_DATA", str(tmp_path / "data"))
    argv = ["benchmark", "esc50", "--out", tmp_path / "report", "-q"]  # default heads: logreg, mlp and auto
    code, _, err = run_cli(capsys, *argv)
    assert code == 1
    msg = " ".join(err.split())
    assert "github.com/karolpiczak/ESC-50" in msg and str(tmp_path / "data" / "esc50") in msg
    assert "meta/esc50.csv" in msg and "Traceback" not in err

    make_esc50_layout(tmp_path / "data" / "esc50")
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    rep = tmp_path / "report"
    assert PLOTS <= {p.name for p in rep.glob("*.png")}
    r = json.loads((rep / "results.json").read_text())
    assert r["dataset"]["layout"] == "esc50" and r["extract"]["n_stored"] == 79
    assert r["heads"]["cv_description"].startswith("5-fold CV on the dataset's own folds")
    assert [row["head"] for row in r["heads"]["rows"]] == ["logreg", "mlp", "auto"]  # auto beside the single heads
    assert all(0 < row["lwlrap"] <= 1 and row["accuracy"] is not None for row in r["heads"]["rows"])
    # the best head's out-of-fold classification plots: its confusion matrix counts every scored clip once, and
    # its diagonal is the accuracy embedtag.metrics computed from the same scores
    diag, best = r["heads"]["diagnostics"], r["heads"]["best"]
    counts = np.array(diag["confusion"]["counts"])
    assert counts.sum() == r["heads"]["n_scored_clips"] == 79 and diag["confusion"]["labels"] == \
        sorted({row["labels"] for row in goldlab_rows()[1]})
    assert np.trace(counts) / counts.sum() == pytest.approx(best["accuracy"])
    assert [c["n_pos"] for c in diag["per_class"]] == counts.sum(1).tolist()
    assert all(0 < c["ap"] <= 1 for c in diag["per_class"]) and len(diag["pr_curves"]) == 5
    assert r["heads"]["best"]["lwlrap"] > r["heads"]["baselines"]["prior"]  # real embeddings beat label priors
    assert len(r["provenance"]["weights_sha256"]) == 64 and r["provenance"]["versions"]["tensorflow"]
    assert r["retrieval"]["k"][:3] == [1, 3, 5]
    md = (rep / "report.md").read_text()
    assert all(f"## {s}" in md for s in SECTIONS)
    assert "| auto | all clips |" in md and "| logreg | all clips |" in md
    assert "would rank #" in md and "HEAR 2021" in md and r["provenance"]["weights_sha256"] in md
    assert "this dataset has 5 labels where the references' has 50" in md
    page = (rep / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(PLOTS)
    assert not re.search(r'(src|href)="(?!data:|#|https://)', page) and "<script" not in page
    assert not re.search(r'src="https?:', page) and "<link" not in page  # no external resources

    # a second benchmark of another backbone into the same folder is refused before it overwrites anything
    code, _, err = run_cli(capsys, "benchmark", "esc50", "--out", rep, "--model", "yamnet-lite", "-q")
    assert code == 1 and "holds a benchmark of efficientat-mn04" in err and (rep / "report.md").read_text() == md

    probe, shot = open_in_chromium(rep / "report.html", tmp_path)
    assert probe["errors"] == [] and probe["broken"] == 0 and probe["images"] == len(PLOTS)
    titles = [t for t, _ in probe["sections"]]
    assert titles == SECTIONS
    tops = [y for _, y in probe["sections"]]
    assert tops == sorted(tops) and tops[-1] < shot.shape[0]  # every section is inside the screenshot
    # the screenshot is a rendered page with the plots drawn, not a blank or an error page: matplotlib's blue
    # bars (tab:blue = 31,119,180) cover a real area
    blue = (np.abs(shot.astype(int) - [31, 119, 180]).sum(-1) < 30).sum()
    assert blue > 5000, blue
    assert (shot.reshape(-1, 3) != 255).any(1).mean() > 0.05


def make_fsdkaggle2019_layout(root):
    """The FSDKaggle2019 layout (train_curated/noisy CSVs and folders, labelled test set, vocabulary.csv) over the
    real goldlab clips: a third of the clips in each subset."""
    src, rows = goldlab_rows()
    vocab = sorted({r["labels"] for r in rows})
    root.mkdir()
    (root / "vocabulary.csv").write_text("".join(f"{i},{v}\n" for i, v in enumerate(vocab)))
    for k, (_subset, folder, csv_name) in enumerate([("curated", "train_curated", "train_curated.csv"),
                                                    ("noisy", "train_noisy", "train_noisy.csv"),
                                                    ("test", "test", "test_post_competition.csv")]):
        (root / folder).mkdir()
        with open(root / csv_name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["fname", "labels"])
            for r in rows[k::3]:
                (root / folder / r["fname"]).symlink_to(src / "audio" / r["fname"])
                w.writerow([r["fname"], r["labels"]])
    return len(rows[0::3]), len(rows[1::3]), len(rows[2::3])


def test_benchmark_fsdkaggle2019_layout_every_strategy_and_test_set(tmp_path, capsys, shared_models):
    """An FSDKaggle2019-layout dataset (curated, noisy, labelled test) is benchmarked with real EfficientAT mn04:
    each noisy-label strategy, noisy clips only train, test clips are only scored after training, and the result is
    ranked among the FSDKaggle2019 references with the warning that pretrained models were not allowed."""
    n_cur, n_noisy, n_test = make_fsdkaggle2019_layout(tmp_path / "fsd")
    code, _, err = run_cli(capsys, "benchmark", tmp_path / "fsd", "--out", tmp_path / "rep", "--model",
                       "efficientat-mn04", "--heads", "logreg", "--folds", "3", "-q", "--no-levels")
    assert code == 0, err
    r = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert r["dataset"]["layout"] == "fsdkaggle2019" and r["dataset"]["has_noisy"]
    assert r["provenance"]["backbone"] == "efficientat-mn04" and r["extract"]["n_stored"] == 79
    strategies = [row["strategy"] for row in r["heads"]["rows"]]
    assert strategies == ["curated only", "pooled (noisy weight 1)", "noisy weight 0.3", "confidence weighting",
                          "confidence drop (< 0.5)"]  # the MLP-only ones (Lsoft, smoothing) are not run for logreg
    h = r["heads"]
    assert (h["n_scored_clips"], h["n_train_clips"], h["n_test_clips"]) == (n_cur, n_cur + n_noisy, n_test)
    assert all(0 < row["test_lwlrap"] <= 1 for row in h["rows"])
    assert set(r["profile"]["label_counts"]) == {"curated", "noisy", "test"}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "confidence drop (< 0.5)" in md and "over the curated clips" in md
    assert "(measured on the labelled test set)" in md and "banned external data and pretrained models" in md
    assert "caution: this dataset has 5 labels where the references' has 80" in md  # not the real FSDKaggle2019
    assert (tmp_path / "rep" / "lwlrap_by_strategy.png").stat().st_size > 10_000


# ------------------------------------------------------------------------------------------------ benchmarks/README
def test_benchmarks_readme_is_rendered_from_the_json(tmp_path):
    from benchmarks.run_all import render_readme

    (tmp_path / "search_real.json").write_text(json.dumps({
        "benchmark": "search_real", "machine": "x86_64, 2 CPUs",
        "datasets": [{"dataset": "office", "clips": 220, "none": {"precision_at_k": 0.87361, "map_at_k": 0.8439}},
                     {"dataset": "glass", "clips": 417, "none": {"precision_at_k": 0.9544, "map_at_k": 0.946}}]}))
    (tmp_path / "extract_speed.json").write_text(json.dumps({
        "yamnet": {"clips": 600, "end_to_end": {"clips_per_s": 61.25}},
        "panns-cnn14": {"clips": 60, "end_to_end": {"clips_per_s": 3.5}}}))
    md = render_readme(tmp_path)
    # the run order puts extract_speed first; each JSON is a section with its reproduce command
    assert md.index("## extract_speed") < md.index("## search_real")
    assert "`python -m benchmarks.search_real`" in md
    assert "| dataset | clips | none.precision_at_k | none.map_at_k |" in md
    assert "| office | 220 | 0.8736 | 0.8439 |" in md and "| glass | 417 | 0.9544 | 0.946 |" in md
    assert "### yamnet, panns-cnn14" in md and "| name | clips | end_to_end.clips_per_s |" in md
    assert "| yamnet | 600 | 61.25 |" in md and "| panns-cnn14 | 60 | 3.5 |" in md
    assert "- **machine**: x86_64, 2 CPUs" in md
    assert render_readme(tmp_path) == md  # deterministic: the committed README can be checked against the JSON


def test_benchmarks_readme_says_whether_the_tables_come_from_one_run(tmp_path):
    import time

    from benchmarks.run_all import new_run, one_run, render_readme, save_run, stamp

    run = new_run()
    t0 = time.time() - 1
    for name in ("extract_speed", "search_real"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"benchmark": name, "clips": 3}))
        stamp(run, {"script": name, "rc": 0, "elapsed_s": 12.5}, t0, tmp_path)
    save_run(run, tmp_path)
    assert json.loads((tmp_path / "search_real.json").read_text())["run"]["id"] == run["id"]
    assert one_run(tmp_path)
    md = render_readme(tmp_path)
    assert f"**All tables below come from one run**: `{run['id']}`" in md and "| search_real | ok | 12.5 |" in md
    assert "## _runs" not in md  # the run log is not a result section

    # a script that failed keeps its old JSON unstamped; a result from another run breaks the claim
    stamp(run, {"script": "heads_real", "rc": 1, "elapsed_s": 3.0}, time.time() + 5, tmp_path)
    (tmp_path / "heads_real.json").write_text(json.dumps({"benchmark": "heads_real", "run": {"id": "older"}}))
    assert not one_run(tmp_path)
    md = render_readme(tmp_path)
    assert "do not all come from one run" in md and "`heads_real`: run `older`" in md


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_peak_rss_of_a_child_is_its_own_not_its_parents():
    big = np.ones(400 * 2**20 // 8)  # 400 MiB held by this (parent) process while the child runs
    code = "from embedtag.report import peak_rss_mib; print(peak_rss_mib())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1 < child < 200, child  # getrusage's ru_maxrss would report the parent's ~400+ MiB here
    assert big.sum() > 0


def test_committed_benchmarks_readme_matches_the_committed_json():
    from benchmarks.run_all import README, RESULTS, render_readme

    if not any(RESULTS.glob("*.json")):
        pytest.skip("no benchmark results in this checkout")
    assert README.read_text(encoding="utf-8") == render_readme(), \
        "benchmarks/README.md is stale: python -m benchmarks.run_all --readme-only"
