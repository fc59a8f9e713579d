"""Similar-sound search: exactness against numpy brute force, persistence, incremental adds, compatibility
checks, approximate-index recall, and retrieval quality on real YAMNet embeddings of real audio."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from embedtag.errors import ArtifactError, DataError, IncompatibleError, StoreError
from embedtag.search import Preprocessor, SimilarityIndex, build_index, choose_index, evaluate_index, retrieval_metrics
from embedtag.store import EmbeddingStore, StoreManifest


def make_store(path, n=200, dim=32, *, backbone="yamnet", pooling="mean", seed=0, n_classes=5, start=0,
               spread=0.8):
    """A store of post-ReLU-like clustered vectors, labelled by cluster."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(size=(n_classes, dim))
    lab = rng.integers(0, n_classes, n)
    x = np.maximum(centres[lab] + spread * rng.normal(size=(n, dim)), 0).astype(np.float32)
    store = EmbeddingStore.create(path, StoreManifest(backbone, dim, 16000, pooling, 10.0))
    rows = [{"clip_id": f"c{start + i:05d}", "path": f"/audio/c{start + i:05d}.wav", "embedding": x[i],
             "labels": [f"class{lab[i]}"]} for i in range(n)]
    for s in range(0, n, 5000):
        store.append(rows[s:s + 5000])
    return store


def numpy_neighbours(x, q, k, metric, exclude=None):
    """Brute force in float64: (rows, scores) of the k nearest rows of x to each row of q."""
    x, q = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        s = q @ x.T
    else:
        s = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    if exclude is not None:
        s[np.arange(len(q)), exclude] = -np.inf
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    sc = np.take_along_axis(s, rows, 1)
    return rows, (sc if metric == "cosine" else np.sqrt(-sc))


def preprocess_numpy(x, kind, fit):
    """Independent reference of the preprocessing (whitening is checked separately)."""
    if kind == "none":
        return x
    return x - fit.astype(np.float64).mean(0)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("preprocess", ["none", "center"])
def test_flat_search_equals_numpy_brute_force(tmp_path, metric, preprocess):
    store = make_store(tmp_path / "s", n=300, dim=24)
    x = store.embeddings()
    index = build_index(store, kind="auto", metric=metric, preprocess=preprocess)
    assert index.manifest.kind == "flat"
    q = np.abs(np.random.default_rng(7).normal(size=(20, 24))).astype(np.float32)
    res = index.search(q, k=10)
    rows, scores = numpy_neighbours(preprocess_numpy(x, preprocess, x), preprocess_numpy(q, preprocess, x), 10,
                                    metric)
    ids = np.array(store.clip_ids)
    for i in range(len(q)):
        assert [r["clip_id"] for r in res[i]] == ids[rows[i]].tolist()
        assert [r["rank"] for r in res[i]] == list(range(1, 11))
        np.testing.assert_allclose([r["score"] for r in res[i]], scores[i], rtol=1e-4, atol=1e-4)
    # an id query is its stored vector with the clip itself left out
    by_id = index.query(["c00003", "c00100"], k=5)
    rows_id, _ = numpy_neighbours(preprocess_numpy(x, preprocess, x), preprocess_numpy(x[[3, 100]], preprocess, x),
                                  5, metric, exclude=[3, 100])
    assert [[r["clip_id"] for r in res] for res in by_id] == ids[rows_id].tolist()


def test_whitened_flat_search_equals_brute_force_in_whitened_space(tmp_path):
    store = make_store(tmp_path / "s", n=300, dim=16)
    x = store.embeddings()
    index = build_index(store, metric="cosine", preprocess="whiten", whiten_eps=0.0)
    # whitening with eps=0 decorrelates the store to unit variance in every kept direction
    z = index.preprocessor.transform(x).astype(np.float64)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(z.shape[1]), atol=1e-3)
    q = x[:10] + 0.1
    rows, _ = numpy_neighbours(z, index.preprocessor.transform(q), 7, "cosine")
    got = [[r["clip_id"] for r in res] for res in index.search(q, 7)]
    assert got == np.array(store.clip_ids)[rows].tolist()


def test_preprocessor_validation():
    x = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="preprocess must be one of"):
        Preprocessor.fit(x, "pca")
    with pytest.raises(ValueError, match="n_components"):
        Preprocessor.fit(x, "whiten", n_components=20)
    with pytest.raises(DataError, match="at least 2"):
        Preprocessor.fit(x[:1], "center")
    assert Preprocessor.fit(x, "whiten").out_dim == 8
    assert Preprocessor.fit(x, "whiten", n_components=3).transform(x).shape == (10, 3)


def test_save_load_roundtrip_without_pickle(tmp_path):
    store = make_store(tmp_path / "s", n=120, dim=16)
    index = build_index(store, metric="cosine", preprocess="whiten", whiten_components=8)
    out = index.save(tmp_path / "ix")
    # one version directory, switched in by manifest.json; the lock file is hidden
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["manifest.json", "v000001"]
    assert sorted(p.name for p in (out / "v000001").iterdir()) == ["ids.parquet", "index.faiss",
                                                                    "preprocess.safetensors"]
    manifest = json.loads((out / "manifest.json").read_text())
    # the common artifact header, then the index settings
    assert manifest["kind"] == "similarity-index" and manifest["format_version"] == 2
    assert manifest["embedtag_version"] and manifest["created_at"] and manifest["current"] == "v000001"
    assert manifest["backbone"] == "yamnet" and manifest["embedding_dim"] == 16
    assert manifest["metric"] == "cosine" and manifest["index_kind"] == "flat"
    assert manifest["preprocess"]["kind"] == "whiten" and manifest["preprocess"]["n_components"] == 8
    assert manifest["store_fingerprint"] == store.fingerprint() and manifest["n_clips"] == 120
    loaded = SimilarityIndex.load(out)
    q = store.embeddings()[:5]
    assert loaded.search(q, 6) == index.search(q, 6)
    assert loaded.query("c00010", 3)[0][0]["labels"] is not None
    with pytest.raises(StoreError, match="not a similarity index"):
        SimilarityIndex.load(tmp_path / "s")
    (out / "v000001" / "ids.parquet").unlink()
    with pytest.raises(ArtifactError, match="ids.parquet is missing"):
        SimilarityIndex.load(out)


def test_incremental_add_matches_rebuild(tmp_path):
    store = make_store(tmp_path / "s", n=150, dim=16, seed=0)
    index = build_index(store, metric="cosine")
    more = make_store(tmp_path / "s", n=60, dim=16, seed=1, start=150)  # same store, new shard
    assert len(more) == 210
    assert index.add_from_store(more) == 60
    assert index.add_from_store(more) == 0  # already indexed clips are skipped
    assert len(index) == 210 and index.manifest.store_fingerprint == more.fingerprint()
    rebuilt = build_index(more, metric="cosine")
    q = more.embeddings()[::7]
    assert index.search(q, 8) == rebuilt.search(q, 8)
    index.save(tmp_path / "ix")
    assert len(SimilarityIndex.load(tmp_path / "ix")) == 210


def test_other_backbone_or_dim_is_refused(tmp_path):
    index = build_index(make_store(tmp_path / "a", n=50, dim=16), metric="cosine")
    with pytest.raises(IncompatibleError, match="backbone: index has 'yamnet', store has 'panns-cnn14'"):
        index.add_from_store(make_store(tmp_path / "b", n=10, dim=16, backbone="panns-cnn14"))
    with pytest.raises(IncompatibleError, match="embedding_dim"):
        index.add_from_store(make_store(tmp_path / "c", n=10, dim=8))
    with pytest.raises(IncompatibleError, match="pooling"):
        index.add_from_store(make_store(tmp_path / "d", n=10, dim=16, pooling="max"))
    with pytest.raises(IncompatibleError, match="dimension 2048.*16-d yamnet"):
        index.search(np.zeros((2, 2048), np.float32), 3)
    with pytest.raises(DataError, match="neither a clip id"):
        index.query("no-such-clip", 3)
    with pytest.raises(ValueError, match="kind must be one of"):
        build_index(make_store(tmp_path / "e", n=10, dim=4), kind="annoy")


def test_auto_choice_and_parameters():
    assert choose_index(1000, 1024)[0] == "flat"
    kind, params = choose_index(1_000_000, 1024)
    assert kind == "ivfpq" and params["nlist"] == 2048 and params["pq_m"] == 128 and params["refine"] == "SQ8"
    assert choose_index(200_000, 1024, kind="ivfpq", nprobe=64)[1]["nprobe"] == 64
    with pytest.raises(ValueError, match="unknown parameters"):
        choose_index(100, 8, kind="flat", nprobe=3)


def test_approximate_indexes_recall_against_exact(tmp_path):
    store = make_store(tmp_path / "s", n=12_000, dim=32, n_classes=40, spread=0.5)
    ivf = build_index(store, kind="ivfpq", metric="cosine", preprocess="center")
    # dim 32 -> the minimum of 8 sub-quantisers
    assert ivf.manifest.factory == "IVF256,PQ8x4fs,Refine(RR32,SQ8)"
    ev = evaluate_index(ivf, k=10, max_queries=300)
    assert ev.recall_at_k is not None and ev.recall_at_k >= 0.9, ev
    assert ev.precision_at_k > 5 * ev.chance_precision
    ivf.save(tmp_path / "ivf")
    loaded = SimilarityIndex.load(tmp_path / "ivf")
    assert loaded.manifest.params["nprobe"] == 32
    assert loaded.query("c00042", 5) == ivf.query("c00042", 5)
    hnsw = build_index(store, kind="hnsw", metric="l2")
    assert evaluate_index(hnsw, k=10, store=store, max_queries=300).recall_at_k >= 0.95
    with pytest.raises(DataError, match="at least 10000 clips"):
        build_index(make_store(tmp_path / "small", n=500, dim=32), kind="ivfpq")


def test_projection_dim_follows_the_size_budget_and_the_energy():
    from embedtag.search import principal_directions, projection_dim

    def spectrum(x):
        return principal_directions(x)[0]

    rng = np.random.default_rng(0)
    # full-rank 1024-d: as many directions as fit ~22% of the flat size, a multiple of pq_m
    assert projection_dim(spectrum(rng.normal(size=(3000, 1024))), pq_m=128) == 768
    # 100 directions carry all the energy of these 512-d vectors: keep them (rounded up to pq_m), no more
    low = rng.normal(size=(3000, 100)) @ rng.normal(size=(100, 512))
    assert projection_dim(spectrum(low), pq_m=64) == 128
    assert projection_dim(spectrum(rng.normal(size=(500, 32))), pq_m=8) == 0  # narrow embeddings are left alone


def test_projected_ivfpq_index_keeps_recall_and_round_trips(tmp_path):
    # 320-d embeddings that live in a 48-d subspace (as audio embeddings use far fewer directions than their width)
    rng = np.random.default_rng(3)
    n, lab = 12_000, rng.integers(0, 40, 12_000)
    basis = rng.normal(size=(48, 320))
    z = rng.normal(size=(40, 48))[lab] + 0.5 * rng.normal(size=(n, 48))
    x = np.maximum(z @ basis, 0).astype(np.float32)
    store = EmbeddingStore.create(tmp_path / "s", StoreManifest("yamnet", 320, 16000, "mean", 10.0))
    store.append([{"clip_id": f"c{i:05d}", "path": "", "embedding": x[i], "labels": [f"k{lab[i]}"]}
                  for i in range(n)])
    ivf = build_index(store, kind="ivfpq", metric="cosine", preprocess="center")
    d = ivf.manifest.params["project_dim"]
    assert 0 < d < 320 and ivf.manifest.factory.startswith(f"Proj{d},IVF")
    ev = evaluate_index(ivf, k=10, max_queries=300)
    assert ev.recall_at_k >= 0.9, ev
    ivf.save(tmp_path / "ivf")
    loaded = SimilarityIndex.load(tmp_path / "ivf")
    assert loaded.query("c00042", 5) == ivf.query("c00042", 5)  # a stored clip as query: codes mapped back
    # ... whose neighbours are the exact ones: the re-ranking codes map back through the projection
    xc = x - x.astype(np.float64).mean(0)
    exact_rows, _ = numpy_neighbours(xc, xc[42:43], 10, "cosine", exclude=[42])
    got = {h["clip_id"] for h in loaded.query("c00042", 10)[0]}
    assert len(got & {f"c{r:05d}" for r in exact_rows[0]}) >= 8
    off = build_index(store, kind="ivfpq", metric="cosine", preprocess="center", project_dim=0)
    assert off.manifest.factory == "IVF256,PQ40x4fs,Refine(RR320,SQ8)"
    with pytest.raises(ValueError, match="project_dim must be"):
        build_index(store, kind="ivfpq", project_dim=100)


def test_retrieval_metrics_by_hand():
    neigh = [[["a"], ["b"], ["a", "c"]], [["x"], None, ["y"]]]
    prec, mapk = retrieval_metrics(neigh, [["a"], ["y"]], n_relevant=[2, 1], k=3)
    assert prec == pytest.approx((2 / 3 + 1 / 3) / 2)
    # query 1: hits at ranks 1 and 3 -> (1 + 2/3) / 2; query 2: hit at rank 3 -> (1/3) / 1
    assert mapk == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2)


# ------------------------------------------------------------------------------------------------ real audio
@pytest.fixture(scope="module")
def office(real_store):
    return real_store("dcase2016_task2_office")


def test_real_precision_at_5_raw_centred_whitened(office, shared_data):
    chance = None
    results = {}
    for pre in ("none", "center", "whiten"):
        ev = evaluate_index(build_index(office, metric="cosine", preprocess=pre), k=5)
        results[pre] = ev.precision_at_k
        chance = ev.chance_precision
        assert ev.n_queries == 220
    # 11 balanced classes: chance is 19/219; YAMNet neighbours are mostly the same office event
    assert chance == pytest.approx(19 / 219)
    for pre, p in results.items():
        assert p > 0.75, (pre, results)
    # the same numbers from the dataset's labels.csv as from the labels kept in the store
    index = build_index(office, preprocess="center")
    csv_ev = evaluate_index(index, shared_data / "dcase2016_task2_office" / "labels.csv", k=5)
    assert csv_ev.precision_at_k == pytest.approx(evaluate_index(index, k=5).precision_at_k)


def test_real_audio_file_query_matches_stored_id_query(office):
    index = build_index(office, metric="cosine", preprocess="center")
    ids = index.clip_ids[::80]  # three clips of different classes
    paths = [index.paths[index.clip_ids.index(c)] for c in ids]
    by_file = index.query(paths, k=6)
    by_id = index.query(ids, k=5)
    for clip_id, f, i in zip(ids, by_file, by_id):
        # the file is itself indexed: it comes back first, then exactly the id query's neighbours
        assert f[0]["clip_id"] == clip_id and f[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert [r["clip_id"] for r in f[1:]] == [r["clip_id"] for r in i]
        np.testing.assert_allclose([r["score"] for r in f[1:]], [r["score"] for r in i], atol=1e-4)
    # a directory query is every audio file in it
    assert len(index.expand_queries([str(Path(paths[0]).parent)])) == 220
    # search() takes files, clip ids and vectors in one call, each result named by its query
    named = index.search_named([paths[0], ids[1], office.embeddings()[0]], k=5)
    assert [(r.query, r.query_type) for r in named] == [(paths[0], "file"), (ids[1], "clip_id"),
                                                          ("vector #2", "vector")]
    assert [h["clip_id"] for h in named[0].neighbours] == [h["clip_id"] for h in by_file[0][:5]]
    assert named[1].neighbours == by_id[1]
    assert named[2].neighbours[0]["clip_id"] == office.clip_ids[0]


@pytest.mark.parametrize("metric,preprocess", [("cosine", "none"), ("cosine", "center"), ("l2", "none")])
def test_real_exact_search_equals_numpy_brute_force(office, metric, preprocess):
    x = office.embeddings()
    index = build_index(office, kind="flat", metric=metric, preprocess=preprocess)
    ids = np.array(office.clip_ids)
    every = list(range(0, len(ids), 11))
    rows, scores = numpy_neighbours(preprocess_numpy(x, preprocess, x), preprocess_numpy(x[every], preprocess, x),
                                    5, metric, exclude=every)
    got = index.query(ids[every].tolist(), k=5)
    np.testing.assert_allclose([[r["score"] for r in res] for res in got], scores, rtol=1e-4, atol=1e-4)
    # the same clips in the same order, except where float32 and float64 may order a near-tie differently
    _, scores6 = numpy_neighbours(preprocess_numpy(x, preprocess, x), preprocess_numpy(x[every], preprocess, x),
                                  6, metric, exclude=every)
    n_checked = 0
    for res, want, sc in zip(got, ids[rows], scores6):
        for r in range(5):
            tie = any(abs(sc[r] - sc[j]) < 1e-5 for j in range(6) if j != r)
            if not tie:
                assert res[r]["clip_id"] == want[r]
                n_checked += 1
    assert n_checked >= 0.9 * 5 * len(every)


def test_corrupt_or_newer_manifests_of_stores_and_indexes_are_named(tmp_path):
    from embedtag.store import open_store

    store = make_store(tmp_path / "s", n=50, dim=8)
    build_index(store).save(tmp_path / "i")
    for folder, opener in ((tmp_path / "s", open_store), (tmp_path / "i", SimilarityIndex.load)):
        manifest = folder / "manifest.json"
        good = manifest.read_text()
        newer = re.sub(r'"format_version": \d+', '"format_version": 99', good)
        assert newer != good
        manifest.write_text(newer)
        with pytest.raises(ArtifactError, match=f"{folder} was written by a newer embedtag"):
            opener(folder)
        manifest.write_text(good[: len(good) // 2])
        with pytest.raises(ArtifactError, match=f"{manifest} is corrupt"):
            opener(folder)
        manifest.write_text(good)
        opener(folder)
