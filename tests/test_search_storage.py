"""The similarity index on disk and its query API: the common artifact header, versioned updates that are atomic
and locked (real concurrent processes, SIGKILL at random points), format 1 indexes, tampered files refused with
one line before anything large is allocated, and ``search`` on vectors, clip ids and strings that are neither."""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedtag import artifacts
from embedtag.errors import ArtifactError, DataError, IncompatibleError, ParamError, WrongKindError
from embedtag.search import (
    QueryResult,
    SimilarityIndex,
    add_to_index,
    build_index,
    index_files,
    load_index,
    read_manifest,
    storage,
)
from test_search import make_store

REPO = Path(__file__).resolve().parents[1]


def _cli(*argv, **kw) -> subprocess.Popen:
    """``embedtag ARGV`` as a real process (this worktree's package first on the path)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "embedtag", *map(str, argv)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _versions(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if storage.VERSION_RE.match(p.name))


def _temporaries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".tmp-"))


# ------------------------------------------------------------------------------------------------ search API
def test_search_takes_vectors_clip_ids_and_names_each_query(tmp_path):
    store = make_store(tmp_path / "s", n=60, dim=8)
    x = store.embeddings()
    index = build_index(store)
    one = index.search(x[3], k=4)  # a 1-D vector is one query
    assert len(one) == 1 and one[0][0]["clip_id"] == "c00003"  # a vector skips nothing: itself first
    assert index.search(x[:5], k=4) == [index.search(v, k=4)[0] for v in x[:5]]
    assert index.search(list(map(float, x[3])), k=4) == one  # a list of numbers is one vector too
    # a stored clip id leaves itself out; mixed queries come back in order, each named
    named = index.search_named(["c00003", x[7], "c00010"], k=3)
    assert all(isinstance(r, QueryResult) for r in named)
    assert [(r.query, r.query_type) for r in named] == [("c00003", "clip_id"), ("vector #1", "vector"),
                                                          ("c00010", "clip_id")]
    assert "c00003" not in [h["clip_id"] for h in named[0].neighbours]
    assert named[1].neighbours[0]["clip_id"] == "c00007"
    assert [r.neighbours for r in named] == index.search(["c00003", x[7], "c00010"], k=3)
    assert json.loads(json.dumps(named[0].to_dict()))["query"] == "c00003"
    # the old name still answers
    assert index.query("c00003", 3) == index.search("c00003", 3)


def test_search_errors_name_the_problem(tmp_path):
    index = build_index(make_store(tmp_path / "s", n=30, dim=8))
    with pytest.raises(IncompatibleError, match="dimension 5, but this index holds 8-d yamnet"):
        index.search(np.zeros(5, np.float32))
    with pytest.raises(IncompatibleError, match="dimension 12, but this index holds 8-d"):
        index.search(np.zeros((3, 12), np.float32))
    with pytest.raises(DataError, match="c99999: neither a clip id in this index nor an existing audio file"):
        index.search("c99999")
    # a very long string (was: OSError File name too long) and a NUL byte are not files either
    for s in ("x" * 5000, "a\0b"):
        with pytest.raises(DataError, match="neither a clip id"):
            index.search(s)
    with pytest.raises(DataError, match="NaN"):
        index.search(np.full(8, np.nan, np.float32))
    with pytest.raises(ParamError, match="k must be a positive integer"):
        index.search("c00001", k=0)
    with pytest.raises(ParamError, match="must be a vector, a clip id or an audio file"):
        index.search([{"a": 1}])
    with pytest.raises(ParamError, match="no queries"):
        index.search([])


# ------------------------------------------------------------------------------------------------ the header
def test_index_is_named_when_opened_as_something_else_and_vice_versa(tmp_path):
    store = make_store(tmp_path / "s", n=30, dim=8)
    build_index(store).save(tmp_path / "ix")
    assert artifacts.identify(tmp_path / "ix").kind == artifacts.INDEX
    with pytest.raises(WrongKindError, match=r"s is an embedding store, not a similarity index"):
        load_index(tmp_path / "s")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WrongKindError, match="empty is an empty directory, not a similarity index; make one with "
                                             "`embedtag index build`"):
        load_index(tmp_path / "empty")
    (tmp_path / "head").mkdir()
    (tmp_path / "head" / "config.json").write_text(json.dumps({**artifacts.header(artifacts.HEAD, 1),
                                                               "head": "mlp"}))
    with pytest.raises(WrongKindError, match="head is a head, not a similarity index"):
        load_index(tmp_path / "head")
    with pytest.raises(WrongKindError, match="is a similarity index, not an embedding store"):
        artifacts.read_header(tmp_path / "ix", artifacts.STORE, 1)
    # writing an index over another kind of artifact is refused, with or without overwrite
    for target in (tmp_path / "s", tmp_path / "head"):
        with pytest.raises(WrongKindError, match="refusing to write a similarity index"):
            build_index(store).save(target)
    with pytest.raises(ArtifactError, match="already holds a similarity index; pass --overwrite"):
        build_index(store).save(tmp_path / "ix", overwrite=False)


def _edit_manifest(d: Path, **changes) -> dict:
    path = d / "manifest.json"
    meta = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    path.write_text(json.dumps(meta))
    return meta


@pytest.mark.parametrize("changes,message", [
    ({"kind": "flat"}, r"manifest.json: field 'kind' is 'flat', expected 'similarity-index'"),
    ({"kind": None}, r"manifest.json: field 'kind' is None, expected 'similarity-index'"),
    ({"backbone": None}, r"manifest.json: field 'backbone' is missing"),
    ({"embedding_dim": "abc"}, r"manifest.json: field 'embedding_dim' must be a positive integer, got 'abc'"),
    ({"metric": "dot"}, r"manifest.json: field 'metric' must be one of cosine, l2"),
    ({"index_kind": "annoy"}, r"manifest.json: field 'index_kind' must be one of flat, hnsw, ivfpq"),
    ({"current": "../../etc"}, r"manifest.json: field 'current' must be a version name"),
    ({"current": "v000009"}, r"v000009 is missing"),
    ({"n_clips": 31}, r"ids.parquet lists 30 clips but .*manifest.json says n_clips=31"),
    ({"index_kind": "hnsw", "params": {"ef_search": 16}}, r"field 'index_kind' says 'hnsw'"),
    ({"format_version": "2"}, r"format_version must be an integer"),
])
def test_hand_edited_manifest_is_one_line_naming_the_field(tmp_path, changes, message):
    build_index(make_store(tmp_path / "s", n=30, dim=8)).save(tmp_path / "ix")
    _edit_manifest(tmp_path / "ix", **changes)
    with pytest.raises(ArtifactError, match=message) as exc:
        load_index(tmp_path / "ix")
    assert "\n" not in str(exc.value)


def test_corrupt_ids_parquet_is_named(tmp_path):
    build_index(make_store(tmp_path / "s", n=30, dim=8)).save(tmp_path / "ix")
    ids = index_files(tmp_path / "ix")["ids"]
    good = ids.read_bytes()
    ids.write_bytes(good[: len(good) // 2])
    with pytest.raises(ArtifactError, match=r"ids.parquet: not a readable Parquet file"):
        load_index(tmp_path / "ix")
    pq.write_table(pa.table({"name": [f"c{i}" for i in range(30)]}), ids)
    with pytest.raises(ArtifactError, match=r"ids.parquet: column 'clip_id' is missing"):
        load_index(tmp_path / "ix")
    pq.write_table(pa.table({"clip_id": ["same"] * 30}), ids)
    with pytest.raises(ArtifactError, match=r"ids.parquet: column 'clip_id' repeats clip ids"):
        load_index(tmp_path / "ix")
    pq.write_table(pa.table({"clip_id": [f"c{i}" for i in range(29)]}), ids)
    with pytest.raises(ArtifactError, match=r"ids.parquet lists 29 clips but .* says n_clips=30"):
        load_index(tmp_path / "ix")


# ------------------------------------------------------------------------------------------------ forged FAISS
def _patch(path: Path, offset: int, fmt: str, value) -> None:
    b = bytearray(path.read_bytes())
    b[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(b))


def test_forged_faiss_header_is_refused_before_allocating(tmp_path):
    store = make_store(tmp_path / "s", n=1000, dim=64)
    for kind in ("flat", "hnsw"):
        d = tmp_path / kind
        build_index(store, kind=kind).save(d)
        faiss_path = index_files(d)["faiss"]
        _patch(faiss_path, 8, "<q", 3_000_000)  # ntotal: 3M vectors (12 GB as float32 x 1024)
        with pytest.raises(ArtifactError, match="its header says 3000000 vectors but .*ids.parquet lists 1000"):
            load_index(d)
        _patch(faiss_path, 4, "<i", 1024)  # and the dimension
        with pytest.raises(ArtifactError, match="header says"):
            load_index(d)
    # the same count everywhere (manifest, ids): the file is too small to hold it
    faiss_path = index_files(tmp_path / "flat")["faiss"]
    _patch(faiss_path, 4, "<i", 64)
    with pytest.raises(ArtifactError, match=r"bytes cannot hold the 3000000 vectors its header claims"):
        storage.check_faiss_file(faiss_path, n_ids=3_000_000, dim=64, min_bytes_per_vector=256,
                                 ids_path=tmp_path / "ids.parquet")
    # a consistent header but a forged array length inside a flat file
    _patch(faiss_path, 8, "<q", 1000)
    _patch(faiss_path, 37, "<Q", 3_000_000 * 64)
    with pytest.raises(ArtifactError, match=r"vector array \(192000000 floats\) does not match its header"):
        load_index(tmp_path / "flat")


def test_forged_size_field_inside_faiss_file_cannot_allocate_gigabytes(tmp_path):
    """Past the header checks, FAISS itself reads under an address-space cap: a size field deep in the file that
    asks for 12 GB fails at once instead of zero-filling 12 GB (measured in a fresh process: peak RSS)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the address-space cap is Linux only")
    build_index(make_store(tmp_path / "s", n=1000, dim=64), kind="flat").save(tmp_path / "ix")
    faiss_path = index_files(tmp_path / "ix")["faiss"]
    _patch(faiss_path, 37, "<Q", 3_000_000_000)  # 12 GB of float32
    code = f"""
import resource, sys, time
from pathlib import Path
from embedtag.errors import ArtifactError
from embedtag.search import storage
t = time.perf_counter()
try:
    storage.read_faiss(Path({str(faiss_path)!r}))
    print("LOADED")
except ArtifactError as exc:
    print("REFUSED", exc)
print("SECONDS", time.perf_counter() - t)
# VmHWM: the peak RSS of this program (ru_maxrss would include the forking pytest process's)
print("PEAK_MB", [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")][0] / 1024)
# the cap is lifted again afterwards
print("LIMIT", resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "REFUSED" in out and "not a readable FAISS index" in out, out
    fields = dict(line.split(" ", 1) for line in out.splitlines() if line.split(" ", 1)[0] in
                  ("SECONDS", "PEAK_MB", "LIMIT"))
    assert float(fields["SECONDS"]) < 5 and float(fields["PEAK_MB"]) < 1024, out
    assert fields["LIMIT"] == "True"


# ------------------------------------------------------------------------------------------------ versions
def _write_format1(index: SimilarityIndex, d: Path) -> None:
    """An index as embedtag wrote it before versioned directories (format 1): files beside the manifest."""
    d.mkdir()
    index._write_files(d)
    m = index.manifest
    meta = {"backbone": m.backbone, "embedding_dim": m.embedding_dim, "store_key": m.store_key, "metric": m.metric,
            "preprocess": m.preprocess, "kind": m.kind, "factory": m.factory, "params": m.params,
            "n_clips": len(index), "store_fingerprint": m.store_fingerprint, "store_path": m.store_path,
            "build_time_s": 0.1, "embedtag_version": "0.1.0", "format_version": 1,
            "created_at": "2026-01-01T00:00:00Z", "extra": {}, "artifact": "embedtag-similarity-index"}
    (d / "manifest.json").write_text(json.dumps(meta, indent=2))


def test_format1_index_loads_and_is_upgraded_by_the_next_update(tmp_path):
    store = make_store(tmp_path / "s", n=80, dim=8)
    index = build_index(store, preprocess="center")
    _write_format1(index, tmp_path / "old")
    assert artifacts.identify(tmp_path / "old").kind == artifacts.INDEX
    old = load_index(tmp_path / "old")
    assert old.manifest.current is None and old.manifest.kind == "flat" and len(old) == 80
    assert old.search(["c00001", "c00050"], 5) == index.search(["c00001", "c00050"], 5)
    make_store(tmp_path / "s", n=20, dim=8, seed=2, start=80)
    updated, n = add_to_index(tmp_path / "old", tmp_path / "s")
    assert n == 20
    names = sorted(p.name for p in (tmp_path / "old").iterdir() if not p.name.startswith("."))
    assert names == ["manifest.json", "v000001"]  # the format 1 files went with the switch
    meta = json.loads((tmp_path / "old" / "manifest.json").read_text())
    assert meta["kind"] == "similarity-index" and meta["format_version"] == 2 and meta["index_kind"] == "flat"
    assert meta["created_at"] == "2026-01-01T00:00:00Z"  # the artifact's creation, not the update's
    assert len(load_index(tmp_path / "old")) == 100


def test_updates_switch_versions_and_clean_leftovers(tmp_path):
    make_store(tmp_path / "s", n=50, dim=8)
    d = tmp_path / "ix"
    build_index(tmp_path / "s").save(d)
    # what killed writers leave: a half-written version and a renamed one the manifest never pointed at
    (d / ".tmp-v000002-999").mkdir()
    (d / ".tmp-v000002-999" / "index.faiss").write_bytes(b"partial")
    (d / ".tmp-manifest.json").write_text("{")
    (d / "v000002").mkdir()
    assert load_index(d).manifest.current == "v000001"
    for i in range(3):
        make_store(tmp_path / "s", n=10, dim=8, seed=10 + i, start=50 + 10 * i)
        index, n = add_to_index(d, tmp_path / "s")
        assert n == 10
    assert read_manifest(d).current == "v000005" and len(load_index(d)) == 80
    assert _versions(d) == ["v000004", "v000005"]  # the current one and the previous (for readers mid-open)
    assert _temporaries(d) == []
    # nothing new: no new version
    assert add_to_index(d, tmp_path / "s")[1] == 0 and read_manifest(d).current == "v000005"


def test_saving_over_a_newer_version_is_refused_not_lost(tmp_path):
    make_store(tmp_path / "s", n=40, dim=8)
    d = tmp_path / "ix"
    build_index(tmp_path / "s").save(d)
    stale = load_index(d)
    make_store(tmp_path / "s", n=10, dim=8, seed=4, start=40)
    add_to_index(d, tmp_path / "s")  # another writer's update
    stale.add(np.ones((1, 8), np.float32), ["mine"])
    with pytest.raises(ArtifactError, match="updated by another process since this index was loaded"):
        stale.save(d)
    assert len(load_index(d)) == 50


def test_a_held_lock_makes_writers_wait_or_give_up_with_a_message(tmp_path):
    make_store(tmp_path / "s", n=40, dim=8)
    d = tmp_path / "ix"
    build_index(tmp_path / "s").save(d)
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
from embedtag import artifacts
with artifacts.lock({str(d)!r}, what="similarity index"):
    print("held", flush=True)
    time.sleep(30)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        make_store(tmp_path / "s", n=5, dim=8, seed=9, start=40)
        with pytest.raises(ArtifactError, match=r"another embedtag process \(pid \d+\) is writing this similarity "
                                                r"index"):
            add_to_index(d, tmp_path / "s", timeout_s=0.3)
    finally:
        holder.kill()
        holder.wait()
    assert add_to_index(d, tmp_path / "s", timeout_s=5)[1] == 5


def test_full_disk_while_writing_a_version_changes_nothing(tmp_path, monkeypatch):
    import errno

    make_store(tmp_path / "s", n=40, dim=8)
    d = tmp_path / "ix"
    build_index(tmp_path / "s").save(d)
    make_store(tmp_path / "s", n=10, dim=8, seed=3, start=40)
    real = SimilarityIndex._write_files

    def full(self, folder):
        real(self, folder)  # the files are written, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SimilarityIndex, "_write_files", full)
    with pytest.raises(ArtifactError, match=r"no space left on device while writing .*ix; the index was not "
                                            r"changed"):
        add_to_index(d, tmp_path / "s")
    assert len(load_index(d)) == 40 and _temporaries(d) == [] and _versions(d) == ["v000001"]
    monkeypatch.undo()
    assert add_to_index(d, tmp_path / "s")[1] == 10


def test_threads_of_one_process_take_turns_too(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    make_store(tmp_path / "base", n=50, dim=8)
    for i in range(4):
        make_store(tmp_path / f"s{i}", n=25, dim=8, seed=i + 1, start=1000 * (i + 1))
    build_index(tmp_path / "base").save(tmp_path / "ix")
    with ThreadPoolExecutor(4) as pool:
        added = list(pool.map(lambda i: add_to_index(tmp_path / "ix", tmp_path / f"s{i}")[1], range(4)))
    assert added == [25] * 4 and len(load_index(tmp_path / "ix")) == 150


def test_concurrent_index_add_processes_both_succeed_and_lose_nothing(tmp_path):
    make_store(tmp_path / "base", n=200, dim=16)
    make_store(tmp_path / "b", n=300, dim=16, seed=1, start=1000)
    make_store(tmp_path / "c", n=300, dim=16, seed=2, start=2000)
    build_index(tmp_path / "base").save(tmp_path / "ix")
    procs = [_cli("index", "add", tmp_path / "ix", tmp_path / s) for s in ("b", "c")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "added 300 clips" in err  # the report is for a person: stderr
    # the second writer saw the first's result: one ended with 500, the other with 800 clips
    assert sorted(int(err.split("now ")[1].split(")")[0]) for _, err in outs) == [500, 800]
    index = load_index(tmp_path / "ix")
    want = {f"c{i:05d}" for i in [*range(200), *range(1000, 1300), *range(2000, 2300)]}
    assert set(index.clip_ids) == want and len(index) == 800
    assert index.faiss_index.ntotal == 800
    assert _temporaries(tmp_path / "ix") == []


def _first_write(d: Path, since: float, proc: subprocess.Popen, timeout_s: float = 120) -> bool:
    """Wait until a file under ``d`` other than the lock is created or modified after ``since`` (the writer has
    started writing, whatever its layout); False when the process ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        for root, dirs, files in os.walk(d):
            for name in dirs + files:
                if name == ".lock":
                    continue
                try:
                    if os.stat(os.path.join(root, name)).st_mtime > since:
                        return True
                except OSError:
                    pass
        time.sleep(0.001)
    return False


@pytest.mark.slow
def test_sigkill_during_index_add_leaves_the_previous_version_readable(tmp_path):
    """SIGKILL at random points of `index add` (every other one while it writes): the index always opens, with
    faiss and ids agreeing, holding either the old or the new clips; the next successful add completes it and
    leaves no temporaries."""
    rng = random.Random(1234)
    d, s = tmp_path / "ix", tmp_path / "s"
    make_store(s, n=20_000, dim=128)
    build_index(s).save(d)
    make_store(s, n=2000, dim=128, seed=1, start=20_000)
    t0 = time.perf_counter()
    p = _cli("index", "add", d, s, "-q")
    assert p.wait(timeout=300) == 0
    full_s = time.perf_counter() - t0
    n_expected, start, killed = 22_000, 22_000, 0
    for i in range(6):
        make_store(s, n=2000, dim=128, seed=10 + i, start=start)
        start += 2000
        since = time.time()
        p = _cli("index", "add", d, s, "-q")
        if i % 2:
            time.sleep(rng.uniform(0.3, 1.1) * full_s)
        elif _first_write(d, since, p):
            time.sleep(rng.uniform(0, 0.03))
        p.send_signal(signal.SIGKILL)
        killed += p.wait(timeout=60) == -signal.SIGKILL
        index = load_index(d)  # always readable, and load itself checks ids.parquet against index.faiss
        assert index.faiss_index.ntotal == len(index)
        assert len(index) in (n_expected, start), (len(index), n_expected, start)
        n_expected = len(index)
        assert index.search("c00000", 3)[0]
    index, _ = add_to_index(d, s)
    assert len(index) == start and len(set(index.clip_ids)) == start
    assert _temporaries(d) == [] and len(_versions(d)) <= 2
    assert killed >= 3  # most adds really were killed mid-way


class _Crash(BaseException):
    """Stands for a kill: nothing after it runs (BaseException, so no handler along the way swallows it)."""


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["none", "writing", "renamed", "switched"])),
                    min_size=1, max_size=6))
def test_any_interleaving_of_adds_and_crashes_ends_with_every_clip_exactly_once(tmp_path_factory, ops):
    """Adds of four stores in any order, each maybe crashing while writing its version, after renaming it, or
    after switching the manifest: the index always opens with unique ids and agreeing counts, holds exactly the
    clips of the adds that got past the switch, and one final add per store completes it."""
    from unittest import mock

    root = tmp_path_factory.mktemp("interleave")
    make_store(root / "base", n=20, dim=8)
    for i in range(4):
        make_store(root / f"s{i}", n=10, dim=8, seed=i + 1, start=100 * (i + 1))
    d = root / "ix"
    build_index(root / "base").save(d)
    want = {f"c{j:05d}" for j in range(20)}
    real_write = SimilarityIndex._write_files

    def crash_writing(self, folder):
        real_write(self, folder)
        (folder / "ids.parquet").write_bytes(b"torn")
        raise _Crash

    def crash_before_switch(path, obj):
        raise _Crash

    for store_i, crash in ops:
        added = {f"c{100 * (store_i + 1) + j:05d}" for j in range(10)}
        patches = {"writing": mock.patch.object(SimilarityIndex, "_write_files", crash_writing),
                   "renamed": mock.patch.object(artifacts, "atomic_write_json", crash_before_switch),
                   "switched": mock.patch.object(storage, "clean", side_effect=_Crash)}
        try:
            with patches.get(crash, mock.MagicMock()):
                add_to_index(d, root / f"s{store_i}")
        except _Crash:
            pass
        if crash in ("none", "switched"):
            want |= added
        index = load_index(d)
        assert set(index.clip_ids) == want and len(index.clip_ids) == len(want) == index.faiss_index.ntotal
    for i in range(4):
        add_to_index(d, root / f"s{i}")
    index = load_index(d)
    assert len(index) == 60 and len(set(index.clip_ids)) == 60
    assert _temporaries(d) == [] and len(_versions(d)) <= 2
