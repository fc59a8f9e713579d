"""The contract every head keeps: a scikit-learn estimator (clone, get_params/set_params, __init__ that only
stores parameters, fit on label lists or a multi-hot matrix), an artifact on the common header that refuses
other artifacts and reports hand edits in one line, and an evaluate that knows which clips it was trained on."""

from __future__ import annotations

import contextlib
import json
import shutil

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils import estimator_checks

from conftest import run_cli
from embedtag import artifacts
from embedtag.errors import ArtifactError, DataError, ParamError, WrongKindError
from embedtag.heads import HEADS, LogisticHead, MLPHead, evaluate_head, fit_head, load_head, make_head
from embedtag.heads.api import labels_for_store
from embedtag.store import EmbeddingStore, StoreManifest

# small, non-default settings so every head trains in about a second, and get_params has something to show
FAST = {
    "logreg": {"C": 0.1, "max_iter": 150},
    "mlp": {"hidden": [64], "epochs": 15, "patience": 5, "dropout": 0.25},
    "lightgbm": {"n_estimators": 15, "num_leaves": 7},
    "knn": {"k": 5, "temperature": 0.2},
    "prior": {"seed": 3},
    "auto": {"candidates": ("logreg", "knn"), "C_grid": (0.1,), "inner_folds": 2},
}
SKLEARN_CHECKS = ["check_no_attributes_set_in_init", "check_parameters_default_constructible",
                  "check_get_params_invariance", "check_set_params", "check_estimator_cloneable",
                  "check_do_not_raise_errors_in_init_or_set_params"]


@pytest.fixture(scope="module")
def office(real_store):
    store = real_store("dcase2016_task2_office", model="yamnet-lite")
    Y, vocab, _, labelled = labels_for_store(store)
    assert labelled.all() and len(vocab) == 11
    return store, store.embeddings(), Y, vocab


def _writing(store):
    return store.writing() if hasattr(store, "writing") else contextlib.nullcontext()


def _sub_store(path, store, keep: np.ndarray, labels=None) -> EmbeddingStore:
    """A store holding the clips ``keep`` of ``store`` (same backbone, embeddings and labels)."""
    m = store.manifest
    sub = EmbeddingStore.create(path, StoreManifest(m.backbone, m.embedding_dim, m.sample_rate, m.pooling,
                                                    m.window_s))
    ids, X = store.clip_ids, store.embeddings()
    labels = store.labels() if labels is None else labels
    with _writing(sub):
        sub.append([{"clip_id": ids[i], "embedding": X[i], "labels": labels[i]} for i in np.flatnonzero(keep)])
    return sub


# ------------------------------------------------------------------------------------------- estimators
@pytest.mark.parametrize("kind", sorted(HEADS))
def test_every_head_passes_scikit_learns_parameter_checks(kind):
    for check in SKLEARN_CHECKS:
        getattr(estimator_checks, check)(HEADS[kind].__name__, HEADS[kind]())


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_clone_and_params_round_trip(kind, office):
    _, X, Y, _ = office
    params = FAST[kind]
    head = make_head(kind, **params)
    got = head.get_params(deep=True)
    assert {k: got[k] for k in params} == params
    assert set(vars(head)) == set(got)  # __init__ stored the parameters and nothing else
    for k, v in params.items():
        assert getattr(head, k) is v  # stored unchanged, not converted
    head.fit(X[:60], Y[:60])
    twin = clone(head)
    assert type(twin) is type(head) and twin.get_params() == got
    assert not hasattr(twin, "classes_") and not hasattr(twin, "n_features_in_")  # clone is unfitted
    assert twin.set_params(seed=7) is twin and twin.get_params()["seed"] == 7 and head.get_params()["seed"] != 7
    twin.set_params(**got)
    assert twin.get_params() == got
    with pytest.raises(ParamError, match="Invalid parameter 'nonsense'"):
        twin.set_params(nonsense=1)
    # fitted attributes end with "_"; the vocabulary is classes_
    assert head.n_features_in_ == X.shape[1] == head.embedding_dim and head.n_labels_ == Y.shape[1]
    assert isinstance(head.classes_, np.ndarray) and list(head.classes_) == [f"label_{j}" for j in range(11)]


def test_heads_work_inside_scikit_learn_model_selection(office):
    """The point of the estimator conventions: GridSearchCV clones, sets parameters and refits a head."""
    from sklearn.model_selection import GridSearchCV, KFold

    from embedtag.metrics import lwlrap

    store, X, Y, vocab = office
    search = GridSearchCV(LogisticHead(max_iter=100), {"C": [1e-4, 0.1]}, cv=KFold(3, shuffle=True, random_state=0),
                          scoring=lambda est, X, y: lwlrap(y, est.predict_proba(X))).fit(X, Y, vocabulary=vocab)
    means = search.cv_results_["mean_test_score"]
    assert len(means) == 2 and means[0] != means[1] and search.best_score_ == max(means) > 0.8  # C took effect
    best = search.best_estimator_
    assert best.C == search.best_params_["C"] and best.vocabulary == vocab and best.max_iter == 100


def test_init_only_stores_and_fit_validates():
    X, Y = np.random.default_rng(0).normal(size=(6, 4)), np.eye(3)[[0, 1, 2, 0, 1, 2]]
    bad = LogisticHead(C=-1.0)  # no validation in __init__ (scikit-learn's rule) ...
    assert bad.C == -1.0
    with pytest.raises(ParamError, match=r"invalid C=-1.0: expected a finite number > 0"):  # ... but in fit
        bad.fit(X, Y)
    with pytest.raises(ParamError, match=r"invalid C=inf"):
        make_head("logreg", C=float("inf"))  # make_head validates at once
    with pytest.raises(ParamError, match=r"invalid hidden=\[1, 2, 3\]"):
        MLPHead(hidden=[1, 2, 3]).fit(X, Y)
    with pytest.raises(ParamError, match="unknown parameter 'epochs'"):
        make_head("logreg", epochs=3)
    assert not hasattr(bad, "classes_")  # a refused fit leaves nothing fitted


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_fit_on_label_lists_equals_fit_on_multi_hot(kind, office):
    store, X, Y, vocab = office
    lists = store.labels()
    from_matrix = make_head(kind, **FAST[kind]).fit(X, Y, vocabulary=vocab)
    from_lists = make_head(kind, **FAST[kind]).fit(X, lists)
    assert list(from_lists.classes_) == vocab == sorted(vocab) == from_matrix.vocabulary
    np.testing.assert_allclose(from_lists.predict_proba(X), from_matrix.predict_proba(X), rtol=1e-6, atol=1e-7)
    # a given vocabulary orders the columns; single strings and None (unlabelled) are label lists too
    order = vocab[::-1]
    reordered = make_head(kind, **FAST[kind]).fit(X, [lab[0] for lab in lists], vocabulary=order)
    assert reordered.vocabulary == order
    back, ref = reordered.predict_proba(X)[:, ::-1], from_lists.predict_proba(X)
    # mlp: its random output layer meets the columns in another order; auto: its inner folds (stratified by
    # columns) differ, so it may pick another candidate. Same ranking, not bits
    if kind in ("mlp", "auto"):
        assert (back.argmax(1) == ref.argmax(1)).mean() > 0.9
    else:
        np.testing.assert_allclose(back, ref, rtol=1e-5, atol=1e-6)


def test_fit_takes_pandas_label_columns(office):
    import pandas as pd

    store, X, Y, vocab = office
    ref = make_head("knn", k=5).fit(X, Y, vocabulary=vocab)
    for y in (pd.DataFrame(Y, columns=vocab), pd.Series(store.labels())):
        head = make_head("knn", k=5).fit(X, y)
        assert head.vocabulary == vocab
        np.testing.assert_array_equal(head.predict_proba(X), ref.predict_proba(X))
    with pytest.raises(ParamError, match="y must be a 0/1 matrix"):
        make_head("knn").fit(X[:3], [[1, 0], [0, 1, 1], [1]])


def test_label_list_errors_name_the_row():
    X = np.zeros((3, 4), np.float32)
    with pytest.raises(ParamError, match=r"label 'dog' of row 1 is not in the vocabulary of 1 labels \(cat\)"):
        LogisticHead().fit(X, [["cat"], ["dog"], None], vocabulary=["cat"])
    with pytest.raises(ParamError, match="label 3 of row 0 is not a string"):
        LogisticHead().fit(X, [[3, "a"], ["a"], ["b"]])
    with pytest.raises(ParamError, match="single-label mode needs exactly one label"):
        LogisticHead(multi_label=False).fit(X, [["cat"], None, ["dog"]])


# ------------------------------------------------------------------------------------------- artifacts
@pytest.fixture(scope="module")
def saved(office, tmp_path_factory):
    """A logreg head fitted by fit_head on the real store, saved."""
    store, *_ = office
    head, _ = fit_head(store, head="logreg", params=FAST["logreg"], progress=False)
    out = tmp_path_factory.mktemp("contract") / "head"
    head.save(out)
    return head, out


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_save_load_round_trip_on_real_embeddings(kind, office, tmp_path):
    store, X, Y, vocab = office
    head = make_head(kind, **FAST[kind]).fit(X, store.labels())
    head.train_clip_ids = store.clip_ids
    head.save(tmp_path / "h")
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    assert {k: cfg[k] for k in ("kind", "head", "format_version")} == {"kind": "head", "head": kind,
                                                                       "format_version": 2}
    assert cfg["embedtag_version"] and cfg["created_at"].endswith("Z") and cfg["vocabulary"] == vocab
    assert cfg["train_clips"] == {"file": "train_clips.json", "n_clips": 220}
    assert "clip_ids" not in json.dumps(cfg)  # the 220 ids live in their own file, config.json stays short
    for loaded in (load_head(tmp_path / "h"), HEADS[kind].load(tmp_path / "h"),
                   artifacts.load_predictor(tmp_path / "h")):
        assert type(loaded) is HEADS[kind] and loaded.vocabulary == vocab and loaded.multi_label is True
        assert loaded.train_clip_ids == store.clip_ids
        np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))
        assert clone(loaded).get_params() == loaded.get_params()
    assert list(tmp_path.glob("h/**/.tmp-*")) == []


def test_old_format_heads_still_load(saved, tmp_path):
    head, out = saved
    old = tmp_path / "old"
    shutil.copytree(out, old)
    cfg = json.loads((old / "config.json").read_text())
    legacy = {"format": "embedtag-head", "format_version": 1, "kind": cfg.pop("head")}
    for k in ("kind", "format_version", "train_clips"):
        cfg.pop(k)
    (old / "config.json").write_text(json.dumps({**legacy, **cfg}))
    (old / "train_clips.json").unlink()
    loaded = load_head(old)
    assert isinstance(loaded, LogisticHead) and loaded.train_clip_ids is None
    X = np.random.default_rng(0).normal(size=(4, 1024)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))


def _other_artifacts(tmp_path, store):
    """A store, a similarity index and a fine-tuned run (their metadata; enough to be recognised)."""
    index, run = tmp_path / "index", tmp_path / "run"
    index.mkdir()
    (index / "manifest.json").write_text(json.dumps({**artifacts.header(artifacts.INDEX, 1), "n_vectors": 3}))
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**artifacts.header(artifacts.RUN, 1), "vocabulary": ["a"]}))
    return {"an embedding store": store.path, "a similarity index": index, "a fine-tuned run": run}


def test_save_refuses_other_artifacts_and_existing_heads(saved, office, tmp_path):
    head, _ = saved
    store, X, *_ = office
    for what, path in _other_artifacts(tmp_path, store).items():
        before = {p: p.read_bytes() for p in path.glob("*.json")}
        for overwrite in (False, True):
            with pytest.raises(WrongKindError, match=f"refusing to write a head into {path}: it is {what}"):
                head.save(path, overwrite=overwrite)
        assert {p: p.read_bytes() for p in path.glob("*.json")} == before  # untouched
        with pytest.raises(WrongKindError, match=f"{path} is {what}, not a head"):
            load_head(path)
    target = tmp_path / "h"
    make_head("lightgbm", **FAST["lightgbm"]).fit(X, store.labels()).save(target)
    assert list((target / "lightgbm").glob("label_*.txt"))
    with pytest.raises(ArtifactError, match="already holds a head; pass --overwrite"):
        head.save(target)
    assert isinstance(load_head(target), HEADS["lightgbm"])
    head.save(target, overwrite=True)
    assert isinstance(load_head(target), LogisticHead)
    assert not (target / "lightgbm").exists()  # the replaced head's boosters went with it
    auto = make_head("auto", candidates=("lightgbm",), lightgbm_min_clips=0, inner_folds=2,
                     max_ensemble=1).set_params(seed=0)
    auto.fit(X, store.labels()).save(target, overwrite=True)
    assert list((target / "member_0" / "lightgbm").glob("label_*.txt"))  # an auto head's LightGBM member
    head.save(target, overwrite=True)
    assert not (target / "member_0").exists()  # ...goes with it too
    assert head.train_clip_ids and load_head(target).train_clip_ids == head.train_clip_ids
    make_head("prior").fit(X, store.labels()).save(target, overwrite=True)
    assert not (target / "train_clips.json").exists()  # the new head records no training clips
    with pytest.raises(ArtifactError, match="not empty and holds no embedtag artifact"):
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "notes.txt").write_text("someone's files")
        head.save(tmp_path / "data")


def _edit(cfg: dict, change) -> dict:
    cfg = json.loads(json.dumps(cfg))
    change(cfg)
    return cfg


HAND_EDITS = {
    "no vocabulary": (lambda c: c.pop("vocabulary"), r"field 'vocabulary' is missing"),
    "no params": (lambda c: c.pop("params"), r"field 'params' is missing"),
    "unknown param": (lambda c: c["params"].update(epochs=3), r"field 'params' has unknown parameter 'epochs'"),
    "invalid param": (lambda c: c["params"].update(C=-2), r"field 'params' is invalid: invalid C=-2"),
    "params not an object": (lambda c: c.update(params=[1]), r"field 'params' must be an object"),
    "vocabulary vs n_labels": (lambda c: c["vocabulary"].append("extra"),
                               r"field 'vocabulary' has 12 labels but n_labels is 11"),
    "vocabulary vs weights": (lambda c: c.update(vocabulary=c["vocabulary"] + ["extra"], n_labels=12),
                              r"weights.safetensors does not match .*config.json \(vocabulary of 12 labels"),
    "vocabulary of numbers": (lambda c: c.update(vocabulary=[1, 2]), r"field 'vocabulary' must be a non-empty"),
    "embedding_dim text": (lambda c: c.update(embedding_dim="abc"), r"field 'embedding_dim' must be a positive"),
    "embedding_dim wrong": (lambda c: c.update(embedding_dim=7), r"weights.safetensors does not match"),
    "multi_label text": (lambda c: c.update(multi_label="yes"), r"field 'multi_label' must be true or false"),
    "unknown head type": (lambda c: c.update(head="svm"), r"field 'head' names an unknown head type 'svm'"),
    "format_version text": (lambda c: c.update(format_version="2"), r"format_version must be an integer"),
    "newer format": (lambda c: c.update(format_version=99), r"written by a newer embedtag"),
}


@pytest.mark.parametrize("case", sorted(HAND_EDITS))
def test_hand_edited_config_fails_in_one_line_naming_file_and_field(case, saved, tmp_path):
    _, out = saved
    change, pattern = HAND_EDITS[case]
    h = tmp_path / "h"
    shutil.copytree(out, h)
    cfg = json.loads((h / "config.json").read_text())
    (h / "config.json").write_text(json.dumps(_edit(cfg, change)))
    with pytest.raises(ArtifactError, match=pattern) as exc:
        load_head(h)
    msg = str(exc.value)
    assert "\n" not in msg and str(h) in msg, msg


@pytest.mark.parametrize("missing", ["weights.safetensors", "train_clips.json"])
def test_missing_files_are_named(missing, saved, tmp_path):
    _, out = saved
    h = tmp_path / "h"
    shutil.copytree(out, h)
    (h / missing).unlink()
    with pytest.raises(ArtifactError, match=f"{h / missing} is missing"):
        load_head(h)


def test_weights_of_another_save_are_refused(saved, office, tmp_path):
    """An overwrite interrupted between the weights and config.json must not pass the new weights off under
    the old vocabulary."""
    store, X, *_ = office
    head, out = saved
    h = tmp_path / "h"
    shutil.copytree(out, h)
    other = make_head("logreg").fit(X, [labs[::-1] for labs in store.labels()], vocabulary=head.vocabulary[::-1])
    other.save(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "weights.safetensors", h / "weights.safetensors")  # same shapes, other labels
    with pytest.raises(ArtifactError, match=r"weights.safetensors was not saved together with .*config.json"):
        load_head(h)


def test_an_infinite_parameter_is_refused_before_training(office, tmp_path, capsys):
    store, *_ = office
    out = tmp_path / "h"
    code, _, err = run_cli(capsys, "fit-head", store.path, "--head", "logreg", "-p", "C=1e309", "--out", out, "-q")
    assert code == 1 and "invalid C=inf: expected a finite number > 0" in err and "Traceback" not in err
    assert not out.exists()
    head = make_head("logreg").fit(np.eye(3), np.eye(3))
    head.metrics = {"cv_lwlrap": float("nan")}  # an unknown metric is saved as null, never as NaN
    head.save(out)
    assert json.loads((out / "config.json").read_text())["metrics"] == {"cv_lwlrap": None}


def test_fit_head_cli_overwrite(saved, office, tmp_path, capsys):
    store, *_ = office
    _, out = saved
    h = tmp_path / "h"
    shutil.copytree(out, h)
    args = ["fit-head", store.path, "--head", "knn", "-p", "k=3", "--out", h, "-q"]
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "already holds a head; pass --overwrite" in err
    assert isinstance(load_head(h), LogisticHead)
    code, _, err = run_cli(capsys, *args, "--overwrite")
    assert code == 0, err
    assert load_head(h).get_params()["k"] == 3
    code, _, err = run_cli(capsys, "fit-head", store.path, "--head", "knn", "--out", store.path, "--overwrite")
    assert code == 1 and "it is an embedding store" in err


# ------------------------------------------------------------------------------------------- evaluate
@pytest.fixture(scope="module")
def halves(office, tmp_path_factory):
    """A head trained on the even clips of the store, saved; the odd clips in a store of their own."""
    store, *_ = office
    root = tmp_path_factory.mktemp("halves")
    even = np.arange(len(store.clip_ids)) % 2 == 0
    train = _sub_store(root / "train", store, even)
    test = _sub_store(root / "test", store, ~even)
    head, _ = fit_head(train, head="logreg", params=FAST["logreg"], progress=False)
    assert sorted(head.train_clip_ids) == sorted(np.array(store.clip_ids)[even].tolist())
    head.save(root / "head")
    return store, test, root / "head"


def test_evaluate_warns_exactly_when_evaluated_clips_were_training_clips(halves, capsys):
    store, test, head_dir = halves
    code, out, err = run_cli(capsys, "evaluate", head_dir, test.path)
    assert code == 0 and "lwlrap" in out
    assert "in-sample" not in out + err and "warning" not in err  # held-out clips: nothing to say
    code, out, err = run_cli(capsys, "evaluate", head_dir, store.path)
    assert code == 0
    assert "110 of 220 evaluated clips were used to train this head: in-sample scores" in " ".join(err.split())
    head = load_head(head_dir)
    assert evaluate_head(head, test)["train_overlap"] == 0
    res = evaluate_head(head, store)
    assert res["train_overlap"] == 110 and res["n_clips"] == 220
    head.train_clip_ids = None  # a head saved before clips were recorded: unknown, not zero
    assert evaluate_head(head, store)["train_overlap"] is None


def test_evaluate_takes_a_fine_tuned_run_and_knows_its_clips(halves):
    """A fine-tuned run scores audio; evaluate asks it for the store's clips and reads its train_clip_ids."""
    from embedtag.finetune.artifact import FinetunedModel

    store, test, head_dir = halves
    head = load_head(head_dir)

    class Run(FinetunedModel):  # the predictor surface of a run, without a network to load
        def __init__(self):
            self.vocabulary, self.multi_label, self.train_clip_ids = head.vocabulary, False, head.train_clip_ids
            self.asked = None

        def predict_proba_store(self, store, rows=None, **kw):
            self.asked = rows
            return head.predict_proba(store.embeddings()[rows])

    run = Run()
    res = evaluate_head(run, store)
    assert run.asked.sum() == 220 and res["train_overlap"] == 110
    assert res["lwlrap"] == pytest.approx(evaluate_head(head, store)["lwlrap"])
    assert evaluate_head(run, test)["train_overlap"] == 0
    with pytest.raises(ParamError, match="expected a head or a fine-tuned run, got dict"):
        evaluate_head({"vocabulary": ["a"]}, store)


def test_evaluate_names_the_clip_with_an_unknown_label(halves, tmp_path):
    store, _, head_dir = halves
    labels = store.labels()
    labels[5] = ["unicorn"]
    odd = _sub_store(tmp_path / "odd", store, np.ones(len(labels), bool), labels=labels)
    with pytest.raises(DataError, match=rf"clip '{store.clip_ids[5]}' of .* is labelled 'unicorn'"):
        evaluate_head(load_head(head_dir), odd)

