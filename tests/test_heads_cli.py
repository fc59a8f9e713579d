"""`embedtag fit-head / predict / evaluate` end to end on a real store and real audio files."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, require
from embedtag.cli import main as cli_main
from embedtag.heads import load_head, predict_store
from embedtag.store import EmbeddingStore, StoreManifest


def main(argv: list[str]) -> None:
    """Run the console entry point; it always exits, so turn a non-zero exit into a test failure."""
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    assert exc.value.code == 0, f"embedtag {' '.join(argv)} exited with {exc.value.code}"


@pytest.fixture(scope="module")
def trained(real_store, tmp_path_factory):
    store = real_store("dcase2016_task2_office")
    out = tmp_path_factory.mktemp("cli") / "head"
    main(["fit-head", str(store.path), "--head", "logreg", "-p", "C=0.1", "--folds", "3", "--out", str(out), "-q"])
    return store, out


def test_fit_head_writes_an_artifact_with_cv_metrics(trained):
    store, out = trained
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "head" and cfg["head"] == "logreg" and cfg["params"]["C"] == 0.1
    assert cfg["train_clips"]["n_clips"] == 220 and len(json.loads((out / "train_clips.json").read_text())) == 220
    assert cfg["metrics"]["cv_folds"] == 3
    assert cfg["metrics"]["cv_lwlrap"] > cfg["metrics"]["zero_shot_lwlrap"] > cfg["metrics"]["prior_cv_lwlrap"]
    assert (out / "weights.safetensors").is_file()


def test_predict_store_round_trips_through_the_artifact(trained, tmp_path):
    store, out = trained
    sub = tmp_path / "submission.csv"
    main(["predict", str(out), str(store.path), "--out", str(sub)])
    df = pd.read_csv(sub)
    head = load_head(out)
    assert list(df.columns) == ["fname", *head.vocabulary]
    assert df["fname"].tolist() == store.clip_ids
    direct = predict_store(head, store)
    # the CSV keeps 6 significant digits
    np.testing.assert_allclose(df[head.vocabulary].to_numpy(), direct[head.vocabulary].to_numpy(), rtol=1e-5,
                               atol=1e-7)


def test_predict_audio_directory_writes_a_kaggle_submission(trained, tmp_path):
    store, out = trained
    audio = require(DATA / "dcase2016_task2_office" / "audio")
    clips = tmp_path / "clips"
    (clips / "sub").mkdir(parents=True)
    names = ["cough004.wav", "keyboard005.wav", "phone036.wav"]
    for n in names[:2]:
        shutil.copy(audio / n, clips / n)
    shutil.copy(audio / names[2], clips / "sub" / names[2])
    (clips / "notes.txt").write_text("not audio: skipped")
    sub = tmp_path / "sub.csv"
    main(["predict", str(out), str(clips), "--out", str(sub), "-q"])
    df = pd.read_csv(sub)
    head = load_head(out)
    assert list(df.columns) == ["fname", *head.vocabulary]
    assert df["fname"].tolist() == ["cough004.wav", "keyboard005.wav", "sub/phone036.wav"]
    probs = df[head.vocabulary].to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)  # single-label head: softmax rows
    # embedded on the fly with the head's backbone: the same probabilities as from the extracted store
    from_store = predict_store(head, store).set_index("fname").loc[names, head.vocabulary].to_numpy()
    np.testing.assert_allclose(probs, from_store, atol=2e-3)
    assert [head.vocabulary[j] for j in probs.argmax(1)] == ["cough", "keyboard", "phone"]

    tags = tmp_path / "tags.json"
    main(["predict", str(out), str(clips / "cough004.wav"), "--top-k", "2", "--format", "json", "--out", str(tags),
          "-q"])
    top = json.loads(tags.read_text())
    assert top[0]["fname"] == "cough004.wav" and len(top[0]["tags"]) == 2
    assert top[0]["tags"][0]["label"] == "cough"
    assert top[0]["tags"][0]["probability"] >= top[0]["tags"][1]["probability"]


def test_evaluate_prints_and_saves_plots(trained, tmp_path, capsys):
    store, out = trained
    main(["evaluate", str(out), str(store.path), "--out", str(tmp_path / "eval")])
    captured = capsys.readouterr()
    text = captured.out
    assert "lwlrap" in text and "per class" in text
    # evaluated on the very clips it was trained on
    assert "220 of 220 evaluated clips were used to train this head: in-sample scores" in captured.err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.9 < metrics["lwlrap"] <= 1.0 and metrics["n_clips"] == 220 and "accuracy" in metrics
    assert metrics["train_overlap"] == 220
    assert len(pd.read_csv(tmp_path / "eval" / "per_class.csv")) == 11
    for png in ("per_class_lwlrap.png", "score_distribution.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the report names the in-sample scores too
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "220 of 220 evaluated clips were used to train this predictor" in md


PNG = b"\x89PNG\r\n\x1a\n"
EVAL_PLOTS = {"average_precision.png", "pr_curves.png", "confusion_matrix.png", "score_distribution.png",
              "per_class_lwlrap.png"}


def assert_pngs(folder, names):
    from PIL import Image

    for name in names:
        path = folder / name
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000, name
        with Image.open(path) as im:
            im.verify()  # a complete, decodable PNG
        with Image.open(path) as im:
            assert im.size[0] > 300 and im.size[1] > 200, (name, im.size)


def test_evaluate_report_on_held_out_office_clips(trained, tmp_path, capsys):
    """Issue 11: `evaluate --out` writes report.html with per-class AP, PR curves, a confusion matrix and score
    distributions; metrics.json's AP is sklearn's per class and its confusion matrix is a count of the
    predictions."""
    from sklearn.metrics import average_precision_score

    store, _ = trained
    labels = pd.read_csv(require(DATA / "dcase2016_task2_office" / "labels.csv"))
    labels.iloc[0::2].to_csv(tmp_path / "train.csv", index=False)
    test = labels.iloc[1::2]
    test.to_csv(tmp_path / "test.csv", index=False)
    main(["fit-head", str(store.path), "--labels", str(tmp_path / "train.csv"), "--head", "logreg", "-p", "C=0.1",
          "--out", str(tmp_path / "head"), "-q"])
    rep = tmp_path / "eval"
    main(["evaluate", str(tmp_path / "head"), str(store.path), "--labels", str(tmp_path / "test.csv"), "--out",
          str(rep)])
    captured = capsys.readouterr()
    assert "in-sample" not in captured.err and str(rep / "report.html") in " ".join(captured.err.split())
    assert EVAL_PLOTS <= {p.name for p in rep.glob("*.png")}
    assert_pngs(rep, EVAL_PLOTS)
    metrics = json.loads((rep / "metrics.json").read_text())
    assert metrics["n_clips"] == len(test) == 110 and metrics["multi_label"] is False

    # the same predictions, made here from the saved head
    head = load_head(tmp_path / "head")
    probs = predict_store(head, store).set_index("fname").loc[test["fname"], head.vocabulary].to_numpy()
    truth = test["labels"].tolist()
    for j, row in enumerate(metrics["per_class"]):
        assert row["label"] == head.vocabulary[j]
        y = np.array([t == row["label"] for t in truth])
        assert row["average_precision"] == pytest.approx(average_precision_score(y, probs[:, j]), abs=1e-9)
    counts = np.zeros((len(head.vocabulary), len(head.vocabulary)), int)
    for t, p in zip(truth, probs.argmax(1)):  # hand count: true label's row, top-scored label's column
        counts[head.vocabulary.index(t), p] += 1
    cm = metrics["confusion_matrix"]
    assert cm["labels"] == head.vocabulary and cm["counts"] == counts.tolist()
    assert 0 < counts.sum() - np.trace(counts) < 30  # held-out clips: some mistakes, most right
    assert cm["accuracy"] == pytest.approx(metrics["accuracy"])

    page = (rep / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(EVAL_PLOTS)
    assert "Confusion matrix" in page and "Per-class average precision" in page and "<script" not in page
    assert not re.search(r'(src|href)="(?!data:|#|https://)', page)  # one self-contained file


def test_evaluate_report_of_multi_label_clips_has_no_confusion_matrix(real_store, tmp_path):
    """donateacry_cleaned is multi-label: the report says why it draws no confusion matrix; AP is still sklearn's."""
    from sklearn.metrics import average_precision_score

    from embedtag.errors import DataError
    from embedtag.heads import evaluate_head, fit_head
    from embedtag.report import classification_diagnostics

    store = real_store("donateacry_cleaned", model="yamnet-lite")
    head, _ = fit_head(store, head="logreg", threshold_folds=0, progress=False)
    res = evaluate_head(head, store, out=tmp_path / "eval")
    rep = tmp_path / "eval"
    plots = {p.name for p in rep.glob("*.png")}
    assert plots == EVAL_PLOTS - {"confusion_matrix.png"}
    assert_pngs(rep, plots)
    metrics = json.loads((rep / "metrics.json").read_text())
    assert metrics["multi_label"] is True and (res["truth"].sum(1) > 1).any()
    assert metrics["confusion_matrix"]["status"] == "not run"
    assert "multi-label data" in metrics["confusion_matrix"]["reason"]
    md = (rep / "report.md").read_text()
    section = md.split("## Confusion matrix", 1)[1].split("\n## ", 1)[0]
    assert "not run: multi-label data: a clip can carry several labels" in section and "![" not in section
    for j, row in enumerate(metrics["per_class"]):
        y = res["truth"][:, j]
        expected = average_precision_score(y, res["scores"][:, j]) if 0 < y.sum() < len(y) else None
        assert row["average_precision"] == (pytest.approx(expected, abs=1e-9) if expected is not None else None)
    with pytest.raises(DataError, match="exactly one label per clip"):
        classification_diagnostics(res["truth"], res["scores"], head.vocabulary, multi_label=False)


def test_predict_on_a_store_of_another_backbone_fails_in_one_line(trained, tmp_path, capsys):
    _, out = trained
    other = EmbeddingStore.create(tmp_path / "other", StoreManifest("panns-cnn14", 2048, 32000, "mean", 10.0))
    other.append([{"clip_id": "a.wav", "embedding": np.zeros(2048, np.float32)}])
    with pytest.raises(SystemExit) as exc:
        cli_main(["predict", str(out), str(other.path), "--out", str(tmp_path / "x.csv")])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "panns-cnn14" in err and "yamnet" in err
    assert not (tmp_path / "x.csv").exists()


def test_predict_on_a_folder_records_an_unreadable_file_and_goes_on(trained, tmp_path, capsys):
    """Issue 15: one bad file among many is listed with its reason, the others are predicted, exit code 3."""
    store, out = trained
    audio = require(DATA / "dcase2016_task2_office" / "audio")
    clips = tmp_path / "clips"
    clips.mkdir()
    for n in ("cough004.wav", "phone036.wav"):
        shutil.copy(audio / n, clips / n)
    (clips / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really audio")
    with pytest.raises(SystemExit) as exc:
        cli_main(["predict", str(out), str(clips), "--out", str(tmp_path / "p.csv"), "-q"])
    err = capsys.readouterr().err
    assert exc.value.code == 3 and "broken.wav" in err and "cannot decode" in err and "Traceback" not in err
    df = pd.read_csv(tmp_path / "p.csv")
    head = load_head(out)
    assert df["fname"].tolist() == ["cough004.wav", "phone036.wav"]
    assert [head.vocabulary[j] for j in df[head.vocabulary].to_numpy().argmax(1)] == ["cough", "phone"]
