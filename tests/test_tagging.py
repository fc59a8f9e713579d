"""From scores to tags: decision thresholds from out-of-fold predictions, predict --threshold, evaluate P/R/F1."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli as _run_cli
from embedtag.heads.thresholds import decide, fit_thresholds, threshold_metrics


def test_fit_thresholds_maximise_f1_and_rare_classes_get_the_global_one():
    rng = np.random.default_rng(0)
    Y = np.zeros((200, 3))
    Y[:80, 0] = 1
    Y[:2, 2] = 1  # two positives only: too few for its own curve
    P = rng.uniform(0, 0.3, Y.shape)
    P[:80, 0] = rng.uniform(0.2, 0.4, 80)  # positives of class 0 all score 0.2-0.4: the best threshold is ~0.2
    t = fit_thresholds(Y, P)
    assert 0.15 < t[0] < 0.3
    f1_t = threshold_metrics(Y[:, :1], decide(P[:, :1], t[:1]))["micro_f1"]
    f1_half = threshold_metrics(Y[:, :1], decide(P[:, :1], [0.5]))["micro_f1"]
    assert f1_t > 0.7 and f1_half == 0  # no positive reaches 0.5
    assert t[2] == t[1]  # class 1 has no positive and class 2 two: both take the global threshold
    assert np.all((t >= 0.02) & (t <= 0.98))


def _split_labels(shared_data, dataset, tmp_path, seed=0):
    labels = pd.read_csv(shared_data / dataset / "labels.csv")
    idx = np.random.default_rng(seed).permutation(len(labels))
    cut = int(0.7 * len(labels))
    train, test = labels.iloc[idx[:cut]], labels.iloc[idx[cut:]]
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    return tmp_path / "train.csv", tmp_path / "test.csv"


def test_oof_thresholds_beat_half_on_held_out_f1(real_store, shared_data, tmp_path):
    """donateacry_cleaned is multi-label (baby_cry + a reason); the thresholds come from out-of-fold scores of
    the 70 % training clips and are judged on the 30 % held out."""
    from embedtag.heads import evaluate_head, fit_head, load_head

    store = real_store("donateacry_cleaned", model="yamnet-lite")
    train_csv, test_csv = _split_labels(shared_data, "donateacry_cleaned", tmp_path)
    head, report = fit_head(store, train_csv, head="logreg", progress=False)
    assert head.multi_label and head.thresholds_ is not None and len(head.thresholds_) == len(head.vocabulary)
    assert report.extra["threshold_folds"] == 3
    head.save(tmp_path / "head")
    loaded = load_head(tmp_path / "head")
    assert loaded.thresholds_ == pytest.approx(head.thresholds_)
    tuned = evaluate_head(loaded, store, test_csv)
    loaded.thresholds_ = None
    half = evaluate_head(loaded, store, test_csv)
    assert half["thresholds"].startswith("0.5")
    assert tuned["micro_f1"] > half["micro_f1"] and tuned["macro_f1"] > half["macro_f1"]
    print(f"held-out F1 micro {half['micro_f1']:.3f} -> {tuned['micro_f1']:.3f}, "
          f"macro {half['macro_f1']:.3f} -> {tuned['macro_f1']:.3f}")


def test_old_head_without_thresholds_loads_with_none(real_store, tmp_path):
    from embedtag.heads import fit_head, load_head

    store = real_store("dcase2016_task2_office", model="yamnet-lite")
    head, _ = fit_head(store, head="logreg", progress=False, threshold_folds=0)
    assert head.thresholds_ is None
    head.save(tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    assert cfg["thresholds"] is None
    del cfg["thresholds"]  # a head saved before thresholds existed
    (tmp_path / "h" / "config.json").write_text(json.dumps(cfg))
    assert load_head(tmp_path / "h").thresholds_ is None


def test_predict_threshold_adds_labels_and_evaluate_reports_f1(real_store, shared_data, capsys, tmp_path):
    def run_cli(*argv):
        return _run_cli(capsys, *argv)

    store = real_store("donateacry_cleaned", model="yamnet-lite")
    train_csv, test_csv = _split_labels(shared_data, "donateacry_cleaned", tmp_path)
    code, _, err = run_cli("fit-head", store.path, "--labels", train_csv, "--head", "logreg", "-o", tmp_path / "h",
                           "-q")
    assert code == 0, err
    code, out, err = run_cli("predict", tmp_path / "h", store.path, "--threshold", "auto", "-q")
    assert code == 0, err
    import io

    frame = pd.read_csv(io.StringIO(out), keep_default_na=False)
    assert list(frame.columns[:2]) == ["fname", "labels"]
    head_thresholds = json.loads((tmp_path / "h" / "config.json").read_text())["thresholds"]
    vocab = list(frame.columns[2:])
    for _, row in frame.head(20).iterrows():
        want = [lab for lab, t in zip(vocab, head_thresholds) if row[lab] >= t]
        assert row["labels"] == ",".join(want)
    assert (frame["labels"].str.contains("baby_cry")).mean() > 0.9  # every clip of the set is a baby crying
    code, out, err = run_cli("predict", tmp_path / "h", store.path, "--threshold", "0.99", "--format", "json",
                             "-q")
    assert code == 0, err
    records = json.loads(out)
    assert {"fname", "labels"} <= set(records[0]) and all(
        set(filter(None, r["labels"].split(","))) == {lab for lab in vocab if r[lab] >= 0.99} for r in records)
    code, _, err = run_cli("predict", tmp_path / "h", store.path, "--threshold", "high", "-q")
    assert code != 0 and "--threshold" in err
    code, out, err = run_cli("evaluate", tmp_path / "h", store.path, "--labels", test_csv, "--format", "json",
                             "-q")
    assert code == 0, err
    res = json.loads(out)
    assert 0 < res["micro_f1"] <= 1 and 0 < res["macro_f1"] <= 1
    assert {"precision", "recall", "f1", "threshold"} <= set(res["per_class"][0])
    code, out, err = run_cli("evaluate", tmp_path / "h", store.path, "--labels", test_csv, "--out",
                             tmp_path / "ev", "-q")
    assert code == 0, err
    assert "F1 (micro)" in out
    assert "micro_f1" in json.loads((tmp_path / "ev" / "metrics.json").read_text())


SEGMENTS = ["keyboard", "phone", "speech", "doorslam", "laughter"]
SEGMENT_S = 3.0


def _long_recording(shared_data, path):
    """SEGMENTS, each SEGMENT_S long, made by repeating that label's real office clips end to end."""
    import soundfile as sf

    root = shared_data / "dcase2016_task2_office"
    labels = pd.read_csv(root / "labels.csv")
    parts, sr = [], None
    for lab in SEGMENTS:
        seg = []
        for fname in labels[labels["labels"] == lab]["fname"]:
            x, sr = sf.read(root / "audio" / fname, dtype="float32", always_2d=True)
            seg.append(x.mean(1))
            if sum(map(len, seg)) >= SEGMENT_S * sr:
                break
        parts.append(np.concatenate(seg)[: int(SEGMENT_S * sr)])
    sf.write(path, np.concatenate(parts), sr)
    return path


@pytest.fixture(scope="module")
def office_head(real_store, tmp_path_factory):
    from embedtag.heads import fit_head

    store = real_store("dcase2016_task2_office", model="yamnet-lite")
    head, _ = fit_head(store, head="logreg", progress=False, threshold_folds=0)
    return head.save(tmp_path_factory.mktemp("office") / "head")


def test_predict_frames_follows_the_segments_of_a_long_recording(office_head, shared_data, capsys, tmp_path):
    import io

    wav = _long_recording(shared_data, tmp_path / "long.wav")
    code, out, err = _run_cli(capsys, "predict", office_head, wav, "--frames", "--window-s", "1", "--threshold",
                              "auto", "--plot", tmp_path / "timeline.png", "-q")
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert list(frame.columns[:4]) == ["clip_id", "start_s", "end_s", "labels"]
    assert len(frame) == int(len(SEGMENTS) * SEGMENT_S) and (frame["clip_id"] == "long.wav").all()
    vocab = list(frame.columns[4:])
    truth = [SEGMENTS[int(s // SEGMENT_S)] for s in frame["start_s"]]
    top = [vocab[j] for j in frame[vocab].to_numpy().argmax(1)]
    assert (frame["labels"] == top).all()  # single-label head: the window's top label
    hits = np.mean([a == b for a, b in zip(top, truth)])
    assert hits >= 0.8, list(zip(truth, top))
    assert (tmp_path / "timeline.png").stat().st_size > 5000

    code, out, err = _run_cli(capsys, "predict", office_head, wav, "--frames", "--window-s", "1", "--events",
                              "--format", "json", "-q")
    assert code == 0, err
    events = pd.DataFrame(json.loads(out))
    assert list(events.columns) == ["clip_id", "label", "onset_s", "offset_s", "score"]
    for k, lab in enumerate(SEGMENTS):
        ev = events[events["label"] == lab]
        # the longest event of the segment's label spans the segment, within one window at each end
        best = ev.loc[(ev["offset_s"] - ev["onset_s"]).idxmax()]
        assert abs(best["onset_s"] - k * SEGMENT_S) <= 1.0 and abs(best["offset_s"] - (k + 1) * SEGMENT_S) <= 1.0, ev


def test_frames_to_events_median_filter_and_thresholds():
    from embedtag.frames import frames_to_events

    s = [0.9, 0.9, 0.1, 0.9, 0.9, 0.1, 0.1, 0.95, 0.1, 0.1]  # a one-window gap, then a one-window blip
    frame = pd.DataFrame({"clip_id": "a", "start_s": np.arange(10.0), "end_s": np.arange(10.0) + 1, "x": s,
                          "y": 0.3})
    ev = frames_to_events(frame, median_filter=3)
    assert ev[["label", "onset_s", "offset_s"]].values.tolist() == [["x", 0.0, 5.0]]
    raw = frames_to_events(frame, median_filter=1)
    assert len(raw) == 3 and set(raw["label"]) == {"x"}
    low = frames_to_events(frame, {"x": 0.5, "y": 0.2}, median_filter=3)
    assert (low["label"] == "y").sum() == 1 and low[low["label"] == "y"][["onset_s", "offset_s"]].values.tolist() \
        == [[0.0, 10.0]]


def test_tag_puts_speech_in_the_top_tags_of_a_speech_clip(shared_data, capsys, tmp_path):
    root = shared_data / "dcase2016_task2_office"
    labels = pd.read_csv(root / "labels.csv")
    speech = root / "audio" / labels[labels["labels"] == "speech"]["fname"].iloc[0]
    knock = root / "audio" / labels[labels["labels"] == "knock"]["fname"].iloc[0]
    code, out, err = _run_cli(capsys, "tag", speech, knock, "-m", "yamnet-lite", "-k", "5", "--format", "json", "-q")
    assert code == 0, err
    rec = {r["clip_id"]: r for r in json.loads(out)}
    assert "Speech" in [t["label"] for t in rec[speech.name]["tags"]]
    assert "Speech" not in [t["label"] for t in rec[knock.name]["tags"][:1]]
    assert all(t["score"] >= 0.5 for r in rec.values() for t in r["tags"] if t["label"] in r["labels"])
    code, out, err = _run_cli(capsys, "tag", speech, "-m", "yamnet-lite", "--frames", "--window-s", "0.5",
                              "--threshold", "0.2", "--format", "csv", "-q")
    assert code == 0, err
    import io

    frame = pd.read_csv(io.StringIO(out), keep_default_na=False)
    assert {"clip_id", "start_s", "end_s", "labels", "label_1", "score_1"} <= set(frame.columns) and len(frame) >= 2
    assert (frame["label_1"] == "Speech").any()
    code, out, err = _run_cli(capsys, "tag", speech, "-m", "yamnet-lite")
    assert code == 0 and "Speech" in out


def test_auto_head_picks_deterministically_and_reports_every_candidate(real_store, tmp_path):
    from sklearn.base import clone

    from embedtag.heads import AutoHead, fit_head, load_head

    store = real_store("dcase2016_task2_office", model="yamnet-lite")
    a, _ = fit_head(store, head="auto", params={"candidates": ["logreg", "knn"]}, progress=False, threshold_folds=0)
    b, _ = fit_head(store, head="auto", params={"candidates": ["logreg", "knn"]}, progress=False, threshold_folds=0)
    auto = a.metrics["auto"]
    assert auto.pop("time_s")["selection"] > 0
    assert auto == {k: v for k, v in b.metrics["auto"].items() if k != "time_s"}
    assert auto["selection_clips"] == len(X := store.embeddings()) and auto["inner_folds"] == 3
    assert set(auto["inner_lwlrap"]) == {"logreg(C=0.01)", "logreg(C=0.1)", "logreg(C=1)", "knn"}
    # the default rule on unsampled data: the mean of the best logistic regression and kNN, whatever their order
    assert auto["ensemble"] and sorted(auto["chosen"].split(" + "))[0] == "knn"
    assert a.get_params()["rule"] == "auto" and len(a.members_) == 2
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    a.save(tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    assert cfg["head"] == "auto" and cfg["metrics"]["auto"]["chosen"] == auto["chosen"]
    loaded = load_head(tmp_path / "h")
    assert isinstance(loaded, AutoHead)
    np.testing.assert_allclose(loaded.predict_proba(X), a.predict_proba(X), atol=1e-6)
    assert clone(loaded).get_params() == loaded.get_params()


def test_auto_head_bounds_its_selection_and_averages_an_ensemble(real_store):
    """Above max_selection_clips the inner CV runs 2 folds on a seeded sample, an
    ensemble's scores are the mean of its members' probabilities (lwlrap ranks labels within a clip, which
    per-class ranks would scramble)."""
    from embedtag.heads import AutoHead

    store = real_store("dcase2016_task2_office", model="yamnet-lite")
    X, Y = store.embeddings(), store.labels()
    kw = {"candidates": ("logreg", "knn"), "C_grid": (1.0,), "max_selection_clips": 60, "seed": 3}
    a, b = AutoHead(**kw).fit(X, Y), AutoHead(**kw).fit(X, Y)
    auto = a.metrics["auto"]
    assert auto["selection_clips"] == 60 and auto["inner_folds"] == 2
    assert auto["inner_lwlrap"] == b.metrics["auto"]["inner_lwlrap"]  # the sample is seeded
    assert AutoHead(**{**kw, "seed": 4}).fit(X, Y).metrics["auto"]["inner_lwlrap"] != auto["inner_lwlrap"]
    ens = AutoHead(candidates=("logreg", "knn"), C_grid=(1.0,), max_ensemble=2).fit(X, Y)
    if len(ens.members_) == 1:  # whatever inner CV chose, check the rule on a pair
        from embedtag.heads import make_head

        ens.members_ = [ens.members_[0], make_head("knn", k=5).fit(X, Y)]
        ens.refs_ = ens.refs_ * 2
    P = ens.predict_proba(X[:20])
    np.testing.assert_allclose(P, np.mean([m.predict_proba(X[:20]) for m in ens.members_], axis=0), atol=1e-7)
    assert ens.combine_ == "mean"
