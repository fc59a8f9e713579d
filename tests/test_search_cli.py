"""`embedtag index build|add|evaluate` and `embedtag search`, through the real entry point (embedtag.cli.main)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli
from embedtag.search import SimilarityIndex, build_index
from test_search import make_store

KEYS = {"rank", "score", "clip_id", "path", "labels"}


def test_build_search_json_add_evaluate(tmp_path, capsys):
    store = make_store(tmp_path / "s", n=80, dim=16)
    code, _, err = run_cli(capsys, "index", "build", tmp_path / "s", "--out", tmp_path / "ix", "--preprocess", "center")
    assert code == 0 and "indexed 80 yamnet clips" in err and "kind=flat" in err  # a line for a person: stderr
    code, out, _ = run_cli(capsys, "search", tmp_path / "ix", "c00001", "c00002", "-k", "4", "--format", "json")
    assert code == 0
    named = json.loads(out)
    # each result names its query
    assert [(r["query"], r["query_type"]) for r in named] == [("c00001", "clip_id"), ("c00002", "clip_id")]
    res = [r["results"] for r in named]
    assert len(res) == 2 and all(len(r) == 4 for r in res)
    assert all(set(item) == KEYS for r in res for item in r)
    assert [item["rank"] for item in res[0]] == [1, 2, 3, 4]
    assert "c00001" not in [item["clip_id"] for item in res[0]]  # an id query skips itself
    # the CLI answers what the Python API answers
    api = SimilarityIndex.load(tmp_path / "ix").query(["c00001", "c00002"], 4)
    assert res == json.loads(json.dumps(api))
    assert api == build_index(store, preprocess="center").query(["c00001", "c00002"], 4)

    code, out, _ = run_cli(capsys, "search", tmp_path / "ix", "c00001", "-k", "3")
    assert code == 0 and "nearest to c00001" in out and "clip id" in out

    make_store(tmp_path / "s", n=20, dim=16, seed=3, start=80)
    code, _, err = run_cli(capsys, "index", "add", tmp_path / "ix", tmp_path / "s")
    assert code == 0 and "added 20 clips" in err and "now 100" in err
    assert len(SimilarityIndex.load(tmp_path / "ix")) == 100

    labels = tmp_path / "labels.csv"
    labels.write_text("fname,labels\n" + "".join(f"c{i:05d},{'odd' if i % 2 else 'even'}\n" for i in range(100)))
    code, out, _ = run_cli(capsys, "index", "evaluate", tmp_path / "ix", "--labels", labels, "-k", "5", "--format",
                           "json")
    ev = json.loads(out)
    assert code == 0 and ev["n_queries"] == 100 and ev["k"] == 5
    assert ev["chance_precision"] == pytest.approx(49 / 99)
    code, out, _ = run_cli(capsys, "index", "evaluate", tmp_path / "ix")
    assert code == 0 and "precision@5" in out and "mAP@5" in out


def test_cli_errors_are_one_line(tmp_path, capsys):
    make_store(tmp_path / "s", n=30, dim=8)
    make_store(tmp_path / "other", n=10, dim=8, backbone="panns-cnn14")
    run_cli(capsys, "index", "build", tmp_path / "s", "--out", tmp_path / "ix", "-q")
    code, _, err = run_cli(capsys, "search", tmp_path / "ix", "nope", "-k", "2")
    assert code == 1 and "nope: neither a clip id" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "index", "add", tmp_path / "ix", tmp_path / "other")
    assert code == 1 and "backbone: index has 'yamnet', store has 'panns-cnn14'" in err
    code, _, err = run_cli(capsys, "search", tmp_path / "s", "c00001")
    assert code == 1 and "not a similarity index" in err
    # --out over an existing store is refused rather than overwriting its manifest, --overwrite or not
    files = sorted(p.name for p in (tmp_path / "other").iterdir())
    for extra in ((), ("--overwrite",)):
        code, _, err = run_cli(capsys, "index", "build", tmp_path / "s", "--out", tmp_path / "other", "-q", *extra)
        assert code == 1 and "it is an embedding store" in err and "Traceback" not in err
        assert json.loads((tmp_path / "other" / "manifest.json").read_text())["backbone"] == "panns-cnn14"
        assert sorted(p.name for p in (tmp_path / "other").iterdir()) == files  # nothing added to the store
    # an existing index is replaced only with --overwrite
    before = (tmp_path / "ix" / "manifest.json").read_text()
    code, _, err = run_cli(capsys, "index", "build", tmp_path / "s", "--out", tmp_path / "ix", "-q")
    assert code == 1 and "already holds a similarity index; pass --overwrite" in err
    assert (tmp_path / "ix" / "manifest.json").read_text() == before
    code, _, err = run_cli(capsys, "index", "build", tmp_path / "s", "--out", tmp_path / "ix", "--overwrite",
                           "--metric", "l2")
    assert code == 0 and "metric=l2" in err  # the report is for a person: stderr
    assert SimilarityIndex.load(tmp_path / "ix").manifest.metric == "l2"
    assert sorted(p.name for p in (tmp_path / "ix").iterdir() if p.name.startswith("v")) == ["v000001", "v000002"]
    # a long string is neither a clip id nor a file: said so, not "File name too long"
    code, _, err = run_cli(capsys, "search", tmp_path / "ix", "x" * 5000)
    assert code == 1 and "neither a clip id" in err and "too long" not in err
    code, _, err = run_cli(capsys, "index", "build", tmp_path / "s", "--out", tmp_path / "x", "--kind", "annoy")
    assert code == 2 and "annoy" in err and not (tmp_path / "x").exists()


def test_cli_search_with_real_audio_file(real_store, tmp_path, capsys):
    office = real_store("dcase2016_task2_office")
    build_index(office, preprocess="center").save(tmp_path / "ix")
    path = office.to_pandas(["path"])["path"][5]
    clip = office.clip_ids[5]
    code, out, _ = run_cli(capsys, "search", tmp_path / "ix", path, clip, "-k", "5", "--format", "json")
    assert code == 0
    by_file, by_id = (r["results"] for r in json.loads(out))
    assert by_file[0]["clip_id"] == clip and by_file[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [r["clip_id"] for r in by_file[1:]] == [r["clip_id"] for r in by_id[:4]]
    assert np.isfinite([r["score"] for r in by_id]).all()
