"""The embedding store as an artifact, on real audio: header and validated manifest, the writer's lock and
concurrent writers, batched error rows, disk full, kills at any point, retries of failed clips, labels attached
later, corrupt shards (check / repair), non-UTF-8 file names."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from conftest import DATA, REPO, require, run_cli
from embedtag import artifacts
from embedtag.embeddings.pipeline import extract
from embedtag.errors import ArtifactError, DataError, ParamError, StoreError, WrongKindError
from embedtag.store import EmbeddingStore, StoreManifest, open_store, resolve_path, shard_schema

OFFICE = DATA / "dcase2016_task2_office"
MODEL = "yamnet-lite"  # the fastest backbone: these tests are about the store, not the model


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO))


def _cmd(src, out, *extra) -> list[str]:
    return [sys.executable, "-m", "embedtag", "extract", str(src), "--out", str(out), "--model", MODEL, "-q",
            *map(str, extra)]


def _exactly_once(store_dir: Path, expected: set[str]) -> None:
    s = open_store(store_dir)
    assert s.n_rows() == len(s) == len(expected), (s.n_rows(), len(s), len(expected))
    assert set(s.clip_ids) == expected
    assert s.check().ok


@pytest.fixture(scope="module")
def office_files():
    audio = require(OFFICE / "audio")
    return sorted(audio.glob("*.wav"))


@pytest.fixture()
def small_dir(tmp_path, office_files):
    """12 real office clips (4 knock, 4 speech, 4 phone) in a plain folder, no labels."""
    d = tmp_path / "clips"
    d.mkdir()
    for prefix in ("knock", "speech", "phone"):
        for f in [f for f in office_files if f.name.startswith(prefix)][:4]:
            os.symlink(f, d / f.name)
    return d


@pytest.fixture(scope="module")
def backbone(shared_models):
    from embedtag.embeddings.registry import load_backbone

    return load_backbone(MODEL)


# ------------------------------------------------------------------------------------------------ header
def test_manifest_has_the_common_header_and_old_stores_open(small_dir, tmp_path, backbone):
    out = tmp_path / "s"
    extract(small_dir, out, model=backbone, limit=3, progress=False)
    meta = json.loads((out / "manifest.json").read_text())
    assert list(meta)[:4] == list(artifacts.HEADER_KEYS)
    assert meta["kind"] == "embedding-store" and meta["format_version"] == 1 and meta["created_at"].endswith("Z")
    assert artifacts.identify(out).kind == artifacts.STORE
    # a store written before the header (no "kind") still opens and still takes appends
    for k in ("kind", "embedtag_version", "created_at"):
        meta.pop(k)
    (out / "manifest.json").write_text(json.dumps(meta))
    assert len(open_store(out)) == 3
    extract(small_dir, out, model=backbone, limit=5, progress=False)
    assert len(open_store(out)) == 5


def test_open_store_names_what_a_directory_is(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    (index / "manifest.json").write_text(json.dumps({"kind": "similarity-index", "format_version": 1}))
    with pytest.raises(WrongKindError, match="is a similarity index, not an embedding store"):
        open_store(index)
    head = tmp_path / "head"
    head.mkdir()
    (head / "config.json").write_text(json.dumps({"kind": "head", "format_version": 1, "head": "mlp"}))
    with pytest.raises(WrongKindError, match="is a head, not an embedding store"):
        open_store(head)
    with pytest.raises(StoreError, match="not found"):
        open_store(tmp_path / "nothing")
    # and a store is never created over them, nor over a file or someone's folder
    m = StoreManifest("yamnet-lite", 1024, 16000, "mean", 10.0)
    with pytest.raises(WrongKindError, match="it is a similarity index"):
        EmbeddingStore.create(index, m)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(WrongKindError, match="is a file"):
        EmbeddingStore.create(tmp_path / "file.txt", m)
    with pytest.raises(ArtifactError, match="not empty"):
        EmbeddingStore.create(tmp_path, m)


@pytest.mark.parametrize("field,value,message", [
    ("embedding_dim", "abc", "field 'embedding_dim' must be an integer, got 'abc'"),
    ("format_version", "2", "format_version must be an integer, got '2'"),
    ("window_s", None, "field 'window_s' must be a number, got None"),
    ("window_s", -1.0, "field 'window_s' must be a finite number > 0"),
    ("class_names", "speech", "field 'class_names' must be a list of strings"),
    ("backbone", "<missing>", "field 'backbone' is missing"),
])
def test_hand_edited_manifest_is_one_line_naming_file_and_field(small_dir, tmp_path, backbone, capsys, field, value,
                                                                message):
    out = tmp_path / "s"
    extract(small_dir, out, model=backbone, limit=1, progress=False)
    meta = json.loads((out / "manifest.json").read_text())
    if value == "<missing>":
        del meta[field]
    else:
        meta[field] = value
    (out / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError) as exc:
        open_store(out)
    assert message in str(exc.value) and "manifest.json" in str(exc.value), str(exc.value)
    code, _, err = run_cli(capsys, "info", out)
    assert code == 1 and message in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ writing
def test_lock_refuses_a_second_writer_and_stale_temporaries_go(small_dir, tmp_path, backbone, monkeypatch):
    from embedtag import store as store_mod

    out = tmp_path / "s"
    extract(small_dir, out, model=backbone, limit=2, progress=False)
    stale = out / "shards" / ".tmp-killed.parquet"
    stale.write_bytes(b"PAR1 half a shard")
    monkeypatch.setattr(store_mod, "LOCK_TIMEOUT_S", 0.3)
    t0 = time.monotonic()
    with artifacts.lock(out, what="embedding store"):  # another writer holds the store
        with pytest.raises(ArtifactError, match="another embedtag process .* is writing this embedding store"):
            extract(small_dir, out, model=backbone, progress=False)
    assert time.monotonic() - t0 < 5
    assert len(open_store(out)) == 2 and stale.exists()  # nothing written, nothing touched while locked
    s = extract(small_dir, out, model=backbone, progress=False)
    assert s.n_stored == 10 and not stale.exists()


@pytest.mark.slow
def test_two_concurrent_extract_processes_never_duplicate_or_mix(tmp_path, shared_models):
    src = require(OFFICE / "audio")
    expected = {f.name for f in sorted(src.glob("*.wav"))[:40]}
    # same settings: the second waits for the first (or refuses); together they store each clip once
    out = tmp_path / "same"
    procs = [subprocess.Popen(_cmd(src, out, "--limit", 40, "--batch-size", 4), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    for code, _, err in results:
        assert code == 0 or (code == 1 and "another embedtag process" in err), err
        assert "Traceback" not in err
    assert any(code == 0 for code, _, _ in results)
    _exactly_once(out, expected)
    # other poolings at once on a fresh store: one wins, the other is refused; never a mix
    out = tmp_path / "mixed"
    procs = [subprocess.Popen(_cmd(src, out, "--limit", 40, "--batch-size", 4, "--pooling", pooling), env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pooling in ("mean", "max")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert ("pooling" in loser or "another embedtag process" in loser) and "Traceback" not in loser
    winner = ("mean", "max")[next(i for i, (code, _) in enumerate(results) if code == 0)]
    assert open_store(out).manifest.pooling == winner
    _exactly_once(out, expected)


def test_error_rows_are_batched_and_flushed_on_ctrl_c(tmp_path, office_files, backbone, monkeypatch):
    from embedtag import store as store_mod

    d = tmp_path / "bad"
    d.mkdir()
    for i in range(30):
        (d / f"broken{i:02d}.wav").write_bytes(b"RIFF garbage" * (i + 1))
    for f in office_files[:6]:
        os.symlink(f, d / f.name)
    out = tmp_path / "s"
    s = extract(d, out, model=backbone, batch_size=4, progress=False)
    assert s.n_failed == 30 and s.n_stored == 6 and s.n_unstored == 30
    assert len(list((out / "errors").glob("*.parquet"))) == 1  # one errors shard, not 30 files
    store = open_store(out)
    assert store.failed_ids() == {f"broken{i:02d}.wav" for i in range(30)}

    # a small flush size writes every N rows; Ctrl-C mid-run still flushes what was buffered
    monkeypatch.setattr(store_mod, "ERROR_FLUSH_ROWS", 8)
    real_append = EmbeddingStore.append
    calls = {"n": 0}

    def ctrl_c_on_second_batch(self, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_append(self, rows)

    out2 = tmp_path / "s2"
    monkeypatch.setattr(EmbeddingStore, "append", ctrl_c_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        extract(d, out2, model=backbone, batch_size=4, workers=0, progress=False)
    partial = open_store(out2)
    # inputs go in name order: all 30 broken files failed before the real clips' second batch
    assert len(partial.failed_ids()) == 30 and len(list((out2 / "errors").glob("*.parquet"))) == 4
    monkeypatch.setattr(EmbeddingStore, "append", real_append)
    extract(d, out2, model=backbone, batch_size=4, progress=False)
    _exactly_once(out2, {f.name for f in office_files[:6]})
    assert len(open_store(out2).errors()) == 30


def test_files_honour_the_umask(small_dir, tmp_path, backbone):
    old = os.umask(0o002)
    try:
        extract(small_dir, tmp_path / "s", model=backbone, limit=2, progress=False)
    finally:
        os.umask(old)
    for p in [tmp_path / "s" / "manifest.json", *(tmp_path / "s" / "shards").glob("*.parquet")]:
        assert p.stat().st_mode & 0o777 == 0o664, p


@pytest.mark.parametrize("arrow_style", [False, True])
def test_disk_full_is_one_clear_error_nothing_torn_and_resume_works(small_dir, tmp_path, backbone, monkeypatch,
                                                                   arrow_style):
    from embedtag import store as store_mod

    out = tmp_path / "s"
    real_write = store_mod.pq.write_table
    calls = {"n": 0}

    def full_disk(table, where, **kw):
        calls["n"] += 1
        if calls["n"] >= 3:
            Path(where).write_bytes(b"PAR1 half")  # the device fills half-way through the file
            if arrow_style:  # what Arrow raises: the reason in the message, no errno
                raise OSError(f"error closing file '{where}': No space left on device")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)
        return real_write(table, where, **kw)

    monkeypatch.setattr(store_mod.pq, "write_table", full_disk)
    with pytest.raises(ArtifactError, match="no space left on device while writing .*part-000002.parquet"):
        extract(small_dir, out, model=backbone, batch_size=2, progress=False)
    assert not list(out.rglob(".tmp-*"))
    store = open_store(out)
    report = store.check()
    assert report.ok and report.n_shards == 2 and len(store) >= 2  # two whole shards, nothing torn
    monkeypatch.setattr(store_mod.pq, "write_table", real_write)  # space freed
    extract(small_dir, out, model=backbone, batch_size=2, progress=False)
    _exactly_once(out, {f.name for f in small_dir.iterdir()})


def test_non_utf8_file_names_are_stored_and_found_again(tmp_path, office_files, backbone):
    d = tmp_path / "odd"
    d.mkdir()
    raw = os.fsencode(d)
    shutil.copyfile(os.fsencode(office_files[0]), raw + b"/b\xff.wav")
    shutil.copyfile(os.fsencode(office_files[1]), raw + b"/b\xfe.wav")  # another name that differs only in its bad byte
    with open(raw + b"/c\xff.wav", "wb") as f:
        f.write(b"not audio at all")
    out = tmp_path / "s"
    s = extract(d, out, model=backbone, progress=False)  # used to crash in pyarrow, storing nothing
    # the two audio files are stored once the audio layer opens such names (soundfile needs them as bytes);
    # until then they are failures with a reason like c\xff.wav; either way each name is in the store once
    assert s.n_stored + s.n_failed == 3 and s.n_failed >= 1
    store = open_store(out)
    errors = store.errors()
    assert set(store.clip_ids) | set(errors["clip_id"]) == {"b\\xfe.wav", "b\\xff.wav", "c\\xff.wav"}
    assert "c\\xff.wav" in store.failed_ids() and len(store.clip_ids) == s.n_stored
    for p in store.table(["path"]).column("path").to_pylist() + errors["path"].tolist():
        assert os.path.isfile(resolve_path(p)) and os.fsencode(resolve_path(p)).startswith(raw), p
    assert resolve_path(str(d / "b\\xff.wav")) == os.fsdecode(raw + b"/b\xff.wav")
    again = extract(d, out, model=backbone, progress=False)
    assert again.n_skipped == s.n_stored and again.n_stored == 0 and again.n_failed == s.n_failed
    _exactly_once(out, set(store.clip_ids))
    assert len(open_store(out).errors()) == s.n_failed


def test_readers_deduplicate_by_clip_id_keeping_the_last(small_dir, tmp_path, backbone, capsys):
    out = tmp_path / "s"
    extract(small_dir, out, model=backbone, limit=4, progress=False)
    store = open_store(out)
    rows = store.to_pandas().to_dict("records")
    for r in rows[:2]:  # what an older embedtag's concurrent writers left: the same clips again
        r["embedding"] = np.full(1024, 7.0, np.float32)
        r["labels"] = ["again"]
    store.append(rows[:2])
    store = open_store(out)
    assert store.n_rows() == 6 and len(store) == 4 and sorted(store.clip_ids) == sorted(r["clip_id"] for r in rows)
    emb = dict(zip(store.clip_ids, store.embeddings()))
    labels = dict(zip(store.clip_ids, store.labels()))
    for r in rows[:2]:
        assert np.all(emb[r["clip_id"]] == 7.0) and labels[r["clip_id"]] == ["again"]
    assert len(store.to_pandas()) == len(store.scores()) == 4
    code, out_text, _ = run_cli(capsys, "info", out)
    assert code == 0 and "4 (" in out_text and "2 rows stored twice" in out_text


# ------------------------------------------------------------------------------------------------ reruns
def test_failed_clip_is_retried_after_the_fix_and_exit_code_follows_the_store(small_dir, tmp_path, office_files,
                                                                              capsys, shared_models):
    (small_dir / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " * 10)
    out = tmp_path / "s"
    code, text, _ = run_cli(capsys, "extract", small_dir, "--out", out, "-m", MODEL, "-q")
    assert code == 3 and "broken.wav" in text
    code, text, _ = run_cli(capsys, "extract", small_dir, "--out", out, "-m", MODEL, "-q")
    assert code == 3 and "not stored" in text  # still failing: still exit 3, still recorded once
    store = open_store(out)
    assert store.failed_ids() == {"broken.wav"} and len(store.errors()) == 1
    assert len(store.errors(history=True)) == 2
    (small_dir / "broken.wav").unlink()
    shutil.copy(office_files[-1], small_dir / "broken.wav")  # the user fixes the file
    s = extract(small_dir, out, model=MODEL, progress=False)
    assert s.n_stored == 1 and s.n_retried == 1 and s.n_skipped == 12 and s.n_unstored == 0
    store = open_store(out)
    assert store.failed_ids() == set() and len(store.errors()) == 0
    code, text, _ = run_cli(capsys, "extract", small_dir, "--out", out, "-m", MODEL, "-q")
    assert code == 0
    code, text, _ = run_cli(capsys, "info", out)
    assert code == 0 and "0 not stored" in text


@pytest.mark.parametrize("option", [
    dict(max_duration_s=-1), dict(max_duration_s=float("nan")), dict(window_s=float("inf")),
    dict(window_s=float("nan")), dict(window_s=0), dict(window_s=-2.0), dict(batch_size=0), dict(pooling="median"),
    dict(workers=-1), dict(limit=-1), dict(batch_size=2.5)])
def test_invalid_options_are_refused_before_any_work(small_dir, tmp_path, option, monkeypatch):
    from embedtag.embeddings import pipeline

    monkeypatch.setattr(pipeline, "_load", lambda *a, **k: pytest.fail("a backbone was loaded"))
    out = tmp_path / "s"
    with pytest.raises(ParamError, match=next(iter(option))):
        extract(small_dir, out, model=MODEL, progress=False, **option)
    assert not out.exists()


def test_cli_refuses_bad_options_in_one_line(small_dir, tmp_path, capsys):
    for args in (["--window-s", "inf"], ["--max-duration-s", "-1"], ["--window-s", "nan"]):
        code, _, err = run_cli(capsys, "extract", small_dir, "--out", tmp_path / "s", "-m", MODEL, "-q", *args)
        assert code in (1, 2) and "Traceback" not in err and args[0].strip("-").replace("-", "_") in err.replace(
            "-", "_"), err
        assert not (tmp_path / "s").exists()


def test_no_scores_appends_to_a_store_that_keeps_scores_and_back(small_dir, tmp_path, backbone):
    out = tmp_path / "with"
    extract(small_dir, out, model=backbone, limit=3, progress=False)
    s = extract(small_dir, out, model=backbone, limit=6, scores=False, progress=False)
    assert s.n_stored == 3
    store = open_store(out)
    assert store.manifest.has_scores and store.scores().shape == (6, 521) and np.isfinite(store.scores()).all()
    out = tmp_path / "without"
    extract(small_dir, out, model=backbone, limit=3, scores=False, progress=False)
    extract(small_dir, out, model=backbone, limit=6, progress=False)
    store = open_store(out)
    assert not store.manifest.has_scores and store.scores() is None and len(store) == 6


# ------------------------------------------------------------------------------------------------ labels
def test_labels_given_on_a_rerun_label_clips_stored_earlier(small_dir, tmp_path, backbone, capsys):
    out = tmp_path / "s"
    extract(small_dir, out, model=backbone, limit=6, progress=False)  # half the clips, no labels
    assert open_store(out).labels() == [None] * 6
    labels = tmp_path / "labels.csv"
    names = sorted(f.name for f in small_dir.iterdir())
    pd.DataFrame({"fname": names, "labels": [n.rstrip("0123456789.wav") for n in names]}).to_csv(labels, index=False)
    before = open_store(out).fingerprint()
    s = extract(small_dir, out, model=backbone, labels=labels, progress=False)
    assert s.n_stored == 6 and s.n_relabelled == 6
    store = open_store(out)
    got = dict(zip(store.clip_ids, store.labels()))
    assert got == {n: [n.rstrip("0123456789.wav")] for n in names}  # all 12 labelled, not 6
    df = store.to_pandas()
    assert df.set_index("clip_id")["labels"].map(list).to_dict() == got
    assert store.table(["labels"]).num_rows == 12 and store.fingerprint() != before
    code, text, _ = run_cli(capsys, "info", out)
    assert "12 (12 labelled)" in text
    # the Python API, and a rerun puts the inputs' labels back
    assert store.set_labels({names[0]: ["door"], names[1]: None}) == 2
    store = open_store(out)
    assert dict(zip(store.clip_ids, store.labels()))[names[0]] == ["door"]
    assert dict(zip(store.clip_ids, store.labels()))[names[1]] is None
    with pytest.raises(DataError, match="not in"):
        store.set_labels({"nope.wav": ["x"]})
    with pytest.raises(ParamError):
        store.set_labels({names[0]: "door"})
    s = extract(small_dir, out, model=backbone, labels=labels, progress=False)
    assert s.n_relabelled == 2 and dict(zip(open_store(out).clip_ids, open_store(out).labels())) == got
    assert extract(small_dir, out, model=backbone, labels=labels, progress=False).n_relabelled == 0


# ------------------------------------------------------------------------------------------------ corruption
def test_corrupt_and_foreign_shards_are_named_checked_and_repaired(small_dir, tmp_path, backbone, capsys):
    out = tmp_path / "s"
    extract(small_dir, out, model=backbone, batch_size=2, progress=False)
    shards = sorted((out / "shards").glob("part-*.parquet"))
    assert len(shards) >= 5
    kept = {c for p in shards[:1] + shards[4:] for c in pq.read_table(p).column("clip_id").to_pylist()}
    foreign = open_store(out).table().slice(0, 2)  # made into the rows of a 384-d store below
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # truncated
    shards[2].write_bytes(os.urandom(4000))  # garbage
    m384 = StoreManifest("other", 384, 16000, "mean", 10.0, class_names=list(open_store(out).manifest.class_names))
    t = pa.table({**{c: foreign.column(c) for c in foreign.column_names if c != "embedding"},
                  "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(2 * 384, np.float32)), 384)})
    pq.write_table(t.select(shard_schema(m384).names).cast(shard_schema(m384)), out / "shards" / "part-000003.parquet")
    (out / "errors" / "part-000000.parquet").write_bytes(b"junk")

    with pytest.raises(StoreError) as exc:
        open_store(out).embeddings()
    assert str(exc.value).startswith(f"{shards[1]}: not a readable Parquet file") and "store repair" in str(exc.value)
    for argv in (["info", out], ["extract", small_dir, "--out", out, "-m", MODEL, "-q"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 1 and "Traceback" not in err and "part-00000" in err and len(err.strip().splitlines()) <= 3, err
    code, text, _ = run_cli(capsys, "store", "check", out, "--format", "json")
    report = json.loads(text)
    assert code == 1 and not report["ok"]
    problems = {Path(p["file"]).name if "errors" not in p["file"] else "errors": p["problem"]
                for p in report["problems"]}
    assert set(problems) == {"part-000001.parquet", "part-000002.parquet", "part-000003.parquet", "errors"}
    assert "384 values per row, the store holds 1024" in problems["part-000003.parquet"]
    code, text, _ = run_cli(capsys, "store", "repair", out)
    assert code == 0 and "moved 4 bad files" in text
    assert len(list((out / "quarantine").iterdir())) == 4
    code, _, _ = run_cli(capsys, "store", "check", out)
    assert code == 0
    assert set(open_store(out).clip_ids) == kept  # the good shards
    s = extract(small_dir, out, model=backbone, progress=False)  # re-extracts the quarantined clips
    assert s.n_stored == 12 - len(kept) > 0
    _exactly_once(out, {f.name for f in small_dir.iterdir()})


# ------------------------------------------------------------------------------------------------ kills
@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_stores_every_input_once(tmp_path, office_files, shared_models):
    d = tmp_path / "clips"
    d.mkdir()
    for f in office_files[::7][:30]:
        os.symlink(f, d / f.name)
    (d / "broken.wav").write_bytes(b"garbage")
    out = tmp_path / "s"
    rng = random.Random(15)
    kills = 0
    def shards() -> int:
        return len(list((out / "shards").glob("part-*.parquet"))) if (out / "shards").is_dir() else 0

    for _ in range(5):
        # kill after a random number of new shards (not after a wall time: that depends on the machine's load),
        # at a random moment within the next batch
        target = shards() + rng.randint(1, 3)
        proc = subprocess.Popen(_cmd(d, out, "--batch-size", 2, "--workers", 1), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and shards() < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if (out / "manifest.json").exists():  # after every kill: nothing torn, nothing twice
            s = open_store(out)
            assert s.n_rows() == len(s) and s.check().ok
    assert kills >= 2, "the runs finished before they could be killed; the test proves little"
    r = subprocess.run(_cmd(d, out), env=_env(), capture_output=True, text=True)
    assert r.returncode == 3 and "Traceback" not in r.stderr  # broken.wav stays failed
    _exactly_once(out, {f.name for f in d.iterdir()} - {"broken.wav"})
    assert open_store(out).failed_ids() == {"broken.wav"} and not list(out.rglob(".tmp-*"))


class _Killed(BaseException):
    """A simulated SIGKILL: no cleanup runs in the store's writer (its temporary file stays behind)."""


def test_any_interleaving_of_extract_kill_fix_rerun_index_add_keeps_every_input_once(tmp_path_factory,
                                                                                      office_files, backbone):
    """Issue 15's property: whatever the order of extract, a killed extract, a fixed or broken file, a rerun and
    ``index add``, the store and the index end with every input exactly once."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    clips = tmp_path_factory.mktemp("tiny")
    for f in office_files[::30][:6]:  # six tiny real clips (0.6 s each)
        x, sr = sf.read(f, dtype="float32")
        sf.write(clips / f.name, x[: int(0.6 * sr)], sr)
    good = {f.name for f in clips.iterdir()}
    fixed_audio = clips / sorted(good)[0]
    step = st.tuples(st.sampled_from(["extract", "kill", "fix", "break", "index"]), st.integers(0, 6))
    from embedtag.search import add_to_index, build_index, load_index

    def index_add(out: Path, ix: Path) -> None:
        if (ix / "manifest.json").exists():
            add_to_index(ix, out)
        elif (out / "manifest.json").exists() and len(open_store(out)):
            build_index(out).save(ix)

    @hypothesis.settings(max_examples=25, deadline=None, derandomize=True, database=None)
    @hypothesis.given(st.lists(step, min_size=1, max_size=5))
    def run(steps):
        work = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
        src = work / "src"
        shutil.copytree(clips, src)
        (src / "bad.wav").write_bytes(b"RIFF not really")
        out, ix = work / "store", work / "index"
        real_atomic = artifacts.atomic_write
        for op, n in steps:
            if op == "index":
                index_add(out, ix)
            elif op == "fix":
                shutil.copy(fixed_audio, src / "bad.wav")
            elif op == "break":
                (src / "bad.wav").write_bytes(b"RIFF not really")
            elif op == "extract":
                extract(src, out, model=backbone, batch_size=2, workers=0, progress=False)
            else:
                state = {"calls": 0}

                def killing(path, write, state=state, n=n):
                    state["calls"] += 1
                    if state["calls"] > n:
                        (Path(path).parent / f".tmp-killed{state['calls']}").write_bytes(b"PAR1 partial")
                        raise _Killed
                    return real_atomic(path, write)

                with mock.patch("embedtag.store.artifacts.atomic_write", killing):
                    try:
                        extract(src, out, model=backbone, batch_size=2, workers=0, progress=False)
                    except _Killed:
                        pass
            if (out / "manifest.json").exists():
                s = open_store(out)
                assert s.n_rows() == len(s) and s.check().ok
        # whatever happened, a final clean run leaves every input exactly once: bad.wav stored if it is audio
        # now or was stored while it was, else recorded as failed
        was_stored = (out / "manifest.json").exists() and "bad.wav" in open_store(out).stored_ids()
        s = extract(src, out, model=backbone, batch_size=2, workers=0, progress=False)
        bad_in = was_stored or (src / "bad.wav").read_bytes() == fixed_audio.read_bytes()
        _exactly_once(out, good | ({"bad.wav"} if bad_in else set()))
        store = open_store(out)
        assert store.failed_ids() == (set() if bad_in else {"bad.wav"})
        assert s.n_unstored == (0 if bad_in else 1)
        assert not list(out.rglob(".tmp-*"))
        index_add(out, ix)  # the index catches up: every stored clip once, nothing else
        ids = load_index(ix).clip_ids
        assert len(ids) == len(set(ids)) and set(ids) == set(store.clip_ids)
        shutil.rmtree(work)

    run()
