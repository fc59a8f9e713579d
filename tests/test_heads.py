"""Heads on a real store (DCASE 2016 office events embedded with real YAMNet): cross-validated lwlrap beats the
label-prior and zero-shot baselines, artifacts round-trip exactly, noisy-label strategies do what they say."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedtag.errors import ArtifactError, DataError, IncompatibleError
from embedtag.heads import (
    HEADS,
    Head,
    ParamError,
    cross_validate,
    fit_head,
    labels_for_store,
    load_head,
    make_head,
    map_labels,
    predict_store,
    train_head,
    zero_shot_store,
)
from embedtag.heads.base import _jsonable
from embedtag.metrics import lwlrap
from embedtag.store import EmbeddingStore, StoreManifest

# small settings so every head trains in about a second on 2 cores
FAST = {
    "logreg": {"C": 0.1},
    "mlp": {"hidden": [128], "epochs": 40, "patience": 8},
    "lightgbm": {"n_estimators": 25, "num_leaves": 7},
    "knn": {"k": 5},
}


@pytest.fixture(scope="module")
def office(real_store):
    store = real_store("dcase2016_task2_office")
    Y, vocab, _, labelled = labels_for_store(store)
    assert labelled.all()
    return store, store.embeddings(), Y, vocab


@pytest.mark.parametrize("kind", sorted(FAST))
def test_head_beats_prior_and_zero_shot_in_cv(office, kind):
    store, X, Y, vocab = office
    for multi_label in (False, True):  # softmax and sigmoid modes both learn the 11 classes
        res = cross_validate(lambda: make_head(kind, **FAST[kind], multi_label=multi_label), X, Y, folds=3)
        prior = cross_validate(lambda: make_head("prior", multi_label=multi_label), X, Y, folds=3)
        zs, mapping = zero_shot_store(store, vocab)
        zero_shot = lwlrap(Y, zs)
        assert all(mapping.values())  # every office label maps to a YAMNet class
        assert prior.lwlrap < 0.2  # balanced classes: the prior ranks about at chance (1/11)
        assert res.lwlrap > prior.lwlrap + 0.5, (kind, multi_label, res.lwlrap)
        assert res.lwlrap > zero_shot, (kind, multi_label, res.lwlrap, zero_shot)
        assert len(res.fold_lwlrap) == 3 and not np.isnan(res.oof).any()


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_saved_head_round_trips_exactly(office, kind, tmp_path):
    store, X, Y, vocab = office
    params = FAST.get(kind, {})
    head, report = fit_head(store, head=kind, params=params, progress=False)
    assert report.multi_label is False and head.vocabulary == vocab
    before = predict_store(head, store)
    head.save(tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    assert cfg["kind"] == "head" and cfg["head"] == kind
    assert cfg["backbone"] == "yamnet" and cfg["embedding_dim"] == 1024
    assert cfg["vocabulary"] == vocab and cfg["extraction"]["pooling"] == store.manifest.pooling
    assert not list((tmp_path / "h").rglob("*.pkl")) and not list((tmp_path / "h").rglob("*.pt"))
    loaded = load_head(tmp_path / "h")
    # JSON keeps no tuples: hidden=[128] comes back as the default's type, (128,)
    assert type(loaded) is type(head) and _jsonable(loaded.get_params()) == _jsonable(head.get_params())
    after = predict_store(loaded, store)
    assert list(after.columns) == ["fname", *vocab]
    np.testing.assert_array_equal(before[vocab].to_numpy(), after[vocab].to_numpy())
    np.testing.assert_allclose(after[vocab].to_numpy().sum(1), 1.0, rtol=1e-4)  # single-label: softmax rows


def test_wrong_backbone_or_dim_fails_clearly(office, tmp_path):
    store, X, Y, vocab = office
    head, _ = fit_head(store, head="logreg", params=FAST["logreg"], progress=False)
    other = EmbeddingStore.create(tmp_path / "other", StoreManifest("panns-cnn14", 2048, 32000, "mean", 10.0))
    other.append([{"clip_id": "a.wav", "embedding": np.zeros(2048, np.float32)}])
    with pytest.raises(IncompatibleError, match=r"1024-d embeddings of backbone 'yamnet'.*2048-d.*panns-cnn14"):
        predict_store(head, other)
    same_dim = EmbeddingStore.create(tmp_path / "lite", StoreManifest("yamnet-lite", 1024, 16000, "mean", 10.0))
    same_dim.append([{"clip_id": "a.wav", "embedding": np.zeros(1024, np.float32)}])
    with pytest.raises(IncompatibleError, match="yamnet-lite"):
        predict_store(head, same_dim)
    with pytest.raises(IncompatibleError, match="1024-d"):
        head.predict_proba(np.zeros((2, 7), np.float32))


def test_multi_label_mixtures_and_noisy_clips_never_scored(office):
    """Multi-label targets from pairs of real clips (embedding of the pair = mean of both, labels = union)."""
    _, X, Y, _ = office
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(X), (2, 300))
    keep = Y[a].argmax(1) != Y[b].argmax(1)
    Xm, Ym = (X[a[keep]] + X[b[keep]]) / 2, np.maximum(Y[a[keep]], Y[b[keep]])
    subset = np.array(["curated"] * len(Xm), dtype=object)
    subset[::3] = "noisy"
    res = cross_validate(lambda: make_head("logreg", C=0.1), Xm, Ym, subset=subset, folds=3)
    noisy = subset == "noisy"
    assert np.isnan(res.oof[noisy]).all() and (res.fold_of[noisy] == -1).all() and not res.scored[noisy].any()
    assert not np.isnan(res.oof[~noisy]).any()
    prior = cross_validate(lambda: make_head("prior"), Xm, Ym, subset=subset, folds=3)
    assert res.lwlrap > prior.lwlrap + 0.3


def test_confidence_weighting_drops_corrupted_labels(office):
    _, X, Y, _ = office
    rng = np.random.default_rng(1)
    noisy = rng.random(len(X)) < 0.6
    wrong = noisy & (rng.random(len(X)) < 0.5)
    Yn = Y.copy()
    Yn[wrong] = np.roll(Y[wrong], 1, axis=1)  # a wrong label for half the noisy clips
    subset = np.where(noisy, "noisy", "curated").astype(object)
    make = lambda: make_head("logreg", C=0.1)  # noqa: E731
    head = train_head(make, X, Yn, subset=subset, confidence="drop", confidence_threshold=0.1)
    assert head.metrics["noisy_clips"] == noisy.sum()
    # check which noisy clips survived: refit stage 1 the same way and recompute the confidence
    first = make().fit(X[~noisy], Yn[~noisy])
    conf = (first.predict_proba(X[noisy]) * Yn[noisy]).sum(1)
    kept = conf >= 0.1
    is_wrong = wrong[noisy]
    assert head.metrics["noisy_kept"] == kept.sum()
    assert kept[~is_wrong].mean() > 0.8 and kept[is_wrong].mean() < 0.2
    w = train_head(make, X, Yn, subset=subset, confidence="weight")
    assert 0 < w.metrics["noisy_mean_weight"] < 1
    clean_only = train_head(make, X, Yn, subset=subset, noisy_weight=0.0)
    assert clean_only.metrics["noisy_kept"] == 0


def test_mlp_soft_bootstrap_and_label_smoothing_train(office):
    _, X, Y, _ = office
    subset = np.where(np.arange(len(X)) % 2 == 0, "noisy", "curated").astype(object)
    for extra in ({"bootstrap_beta": 0.7}, {"label_smoothing": 0.1}):
        res = cross_validate(lambda: make_head("mlp", **FAST["mlp"], **extra), X, Y, subset=subset, folds=3)
        assert res.lwlrap > 0.8, extra


def test_fit_head_reports_cv_and_baselines(office):
    store, *_ = office
    head, report = fit_head(store, head="knn", params=FAST["knn"], folds=3, progress=False)
    m = head.metrics
    assert m["cv_folds"] == 3 and m["cv_scored_clips"] == 220
    assert m["cv_lwlrap"] > m["zero_shot_lwlrap"] > m["prior_cv_lwlrap"]
    assert report.as_dict()["cv_lwlrap"] == m["cv_lwlrap"]


def test_zero_shot_maps_the_fsdkaggle2019_vocabulary(shared_data):
    from conftest import require
    from embedtag.datasets import load_dataset
    from embedtag.embeddings.registry import audioset_labels, yamnet_labels

    vocab = load_dataset(require(shared_data / "FSDKaggle2019.meta")).vocabulary
    for names in (yamnet_labels(), audioset_labels()):
        m = map_labels(vocab, names)
        assert all(m.values())
        assert [names[i] for i in m["Accelerating_and_revving_and_vroom"]] == ["Accelerating, revving, vroom"]
        assert [names[i] for i in m["Bass_drum"]] == ["Bass drum"]  # not "Drum and bass"
    assert [audioset_labels()[i] for i in map_labels(["Female_singing"], audioset_labels())["Female_singing"]] \
        == ["Female singing"]


def test_parameters_are_validated(tmp_path):
    with pytest.raises(ParamError, match="dropout"):
        make_head("mlp", dropout=1.5)
    with pytest.raises(ParamError, match="hidden"):
        make_head("mlp", hidden=[64, 64, 64])
    with pytest.raises(ParamError, match="unknown head"):
        make_head("svm")
    with pytest.raises(ParamError, match="logreg"):
        make_head("logreg", epochs=3)
    with pytest.raises(ParamError, match="k"):
        make_head("knn", k=0)
    with pytest.raises(ParamError, match="single-label"):
        make_head("logreg", multi_label=False).fit(np.zeros((2, 3)), np.array([[1, 1], [0, 1]]))
    with pytest.raises(ParamError, match="not fitted"):
        make_head("knn").predict_proba(np.zeros((1, 3)))
    with pytest.raises(ArtifactError, match="empty directory, not a head"):
        Head.load(tmp_path)
    with pytest.raises(DataError, match="no labels"):
        store = EmbeddingStore.create(tmp_path / "s", StoreManifest("yamnet", 4, 16000, "mean", 10.0))
        store.append([{"clip_id": "a", "embedding": np.zeros(4, np.float32)}])
        fit_head(store, head="knn", progress=False)


def test_fit_head_on_an_fsdkaggle2019_layout_uses_subsets(tmp_path):
    """Labels from train_curated.csv / train_noisy.csv, matched to store clip ids by file name; noisy clips train
    but are never scored."""
    rng = np.random.default_rng(0)
    vocab = ["Bark", "Meow", "Purr"]
    protos = rng.normal(size=(3, 16)).astype(np.float32) * 3
    rows, cur, noi = [], ["fname,labels"], ["fname,labels"]
    for i in range(60):
        j = i % 3
        sub = "train_noisy" if i % 2 else "train_curated"
        name = f"{i:04d}.wav"
        rows.append({"clip_id": f"{sub}/{name}", "embedding": protos[j] + rng.normal(size=16).astype(np.float32)})
        (noi if i % 2 else cur).append(f"{name},{vocab[j]}")
    (tmp_path / "vocabulary.csv").write_text("".join(f"{k},{v}\n" for k, v in enumerate(vocab)))
    (tmp_path / "train_curated.csv").write_text("\n".join(cur) + "\n")
    (tmp_path / "train_noisy.csv").write_text("\n".join(noi) + "\n")
    store = EmbeddingStore.create(tmp_path / "store", StoreManifest("yamnet", 16, 16000, "mean", 10.0))
    store.append(rows)
    head, report = fit_head(store, labels=tmp_path, head="logreg", folds=3, noisy_weight=0.5, progress=False)
    assert head.vocabulary == vocab
    assert report.cv.scored.sum() == 30 and head.metrics["cv_scored_clips"] == 30
    assert head.metrics["noisy_clips"] == 30 and head.metrics["noisy_mean_weight"] == 0.5
    assert report.cv.lwlrap > 0.9 and report.zero_shot_lwlrap is None


def test_lightgbm_on_principal_components_round_trips(office, tmp_path):
    _, X, Y, _ = office
    head = make_head("lightgbm", n_estimators=20, num_leaves=7, n_components=32).fit(X, Y)
    assert head.components_.shape == (32, 1024)
    head.save(tmp_path / "h")
    loaded = load_head(tmp_path / "h")
    np.testing.assert_array_equal(head.predict_proba(X), loaded.predict_proba(X))
    res = cross_validate(lambda: make_head("lightgbm", n_estimators=20, num_leaves=7, n_components=32), X, Y,
                         folds=3)
    assert res.lwlrap > 0.8


def test_fit_head_uses_the_dataset_folds_when_given(tmp_path):
    """ESC-50 comes with its own folds: cross-validation follows them instead of stratifying afresh."""
    rng = np.random.default_rng(0)
    (tmp_path / "meta").mkdir()
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    rows = []
    for i in range(45):
        target, fold = i % 3, i % 5 % 3 + 1
        lines.append(f"{i}-x-A-{target}.wav,{fold},{target},{['dog', 'rain', 'siren'][target]},False,{i},A")
        rows.append({"clip_id": f"{i}-x-A-{target}.wav",
                     "embedding": (np.eye(8)[target] * 4 + rng.normal(size=8)).astype(np.float32)})
    (tmp_path / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")
    store = EmbeddingStore.create(tmp_path / "store", StoreManifest("yamnet", 8, 16000, "mean", 10.0))
    store.append(rows)
    head, report = fit_head(store, labels=tmp_path, head="logreg", folds=5, progress=False)
    assert len(report.cv.fold_lwlrap) == 3 and report.cv.lwlrap > 0.9
    expected = np.array([i % 5 % 3 for i in range(45)])  # folds 1..3 -> 0..2 in file order
    np.testing.assert_array_equal(report.cv.fold_of, expected)
    _, stratified = fit_head(store, labels=tmp_path, head="logreg", folds=5, dataset_folds_first=False,
                             progress=False)
    assert len(stratified.cv.fold_lwlrap) == 5
