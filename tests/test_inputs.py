"""embedtag.inputs: one owner for files, folders, label tables, dataset layouts and clip matching.

Layouts are built in pytest's tmp dir from real clips of ../shared (copied there, never into the repo); the
extract tests embed them with yamnet-lite."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest

from conftest import DATA, require, run_cli
from embedtag.errors import DataError, ParamError
from embedtag.inputs import (
    AUDIO_EXTENSIONS,
    Dataset,
    audio_files,
    load_dataset,
    match_clips,
    read_label_table,
    resolve_sources,
    safe_text,
    split_dataset,
    walk_files,
)

OFFICE = DATA / "dcase2016_task2_office"


def _clips(n: int, pattern: str = "*.wav") -> list:
    return sorted((require(OFFICE / "audio")).glob(pattern))[:n]


def _copy(files, folder) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    return [f.name for f in files]


def _write_csv(path, rows, header=("fname", "labels"), encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _extract(src, out, **kw):
    from embedtag.embeddings.pipeline import extract

    return extract(src, out, model="yamnet-lite", progress=False, **kw)


@pytest.fixture()
def office_copy(tmp_path):
    """A labels.csv + audio/ dataset of 6 real office clips (2 classes) in tmp."""
    require(OFFICE)
    d = tmp_path / "office"
    names = _copy(_clips(3, "cough*.wav") + _clips(3, "keys*.wav"), d / "audio")
    _write_csv(d / "labels.csv", [(n, n.rstrip("0123456789.wav")) for n in names])
    return d


# ------------------------------------------------------------------------------------------------ extensions
def test_audio_extensions_are_what_the_decoder_reads():
    from embedtag.embeddings.audio import AUDIO_EXTENSIONS as decodable

    assert set(AUDIO_EXTENSIONS) == set(decodable)
    assert ".m4a" not in AUDIO_EXTENSIONS and ".wav" in AUDIO_EXTENSIONS and ".flac" in AUDIO_EXTENSIONS
    from embedtag.datasets import AUDIO_EXTENSIONS as compat

    assert compat == AUDIO_EXTENSIONS  # the old module re-exports the one list


# ------------------------------------------------------------------------------------------------ walking
def test_walk_skips_hidden_sidecars_excluded_and_artifacts_and_follows_symlinked_folders(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for rel in ["a.wav", "sub/b.wav", ".hidden.wav", "labels.csv", "SOURCE.txt", "README.md", "notes.txt"]:
        (d / rel).write_bytes(b"x")
    (d / ".git").mkdir()
    (d / ".git" / "c.wav").write_bytes(b"x")
    (d / "out").mkdir()  # the store being written
    (d / "out" / "part-0.parquet").write_bytes(b"x")
    (d / "old_store").mkdir()  # an embedtag artifact
    (d / "old_store" / "manifest.json").write_text('{"kind": "embedding-store", "format_version": 1}')
    (d / "old_store" / "x.wav").write_bytes(b"x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "e.wav").write_bytes(b"x")
    os.symlink(elsewhere, d / "linked")
    os.symlink(d, d / "sub" / "loop")  # a cycle: followed once, never forever
    rels = [r for r, _ in walk_files(d, exclude=[d / "out"])]
    assert rels == ["a.wav", "linked/e.wav", "notes.txt", "sub/b.wav"]
    assert [r for r, _ in walk_files(d, exclude=[d / "out"], audio_only=True)] == ["a.wav", "linked/e.wav",
                                                                                     "sub/b.wav"]
    # every path returned is absolute and lies under the folder given (symlinks are not resolved away)
    assert all(os.path.isabs(p) and p.startswith(str(d)) for _, p in walk_files(d))


# ------------------------------------------------------------------------------------------------ label tables
def test_label_table_bom_aliases_and_empty_labels(tmp_path):
    bom = tmp_path / "excel.csv"
    bom.write_bytes("\ufefffilename,label\nx.wav,dog\ny.wav,\nz.wav,\"a, b\"\n".encode())
    assert read_label_table(bom) == {"x.wav": ["dog"], "y.wav": None, "z.wav": ["a", "b"]}
    ds = load_dataset(bom)
    assert ds.clip_ids == ["x.wav", "y.wav", "z.wav"] and ds.labels[1] is None and ds.vocabulary == ["a", "b", "dog"]
    # the pipeline's old names read the same table (it used to require `fname` and give [] for empty labels)
    from embedtag.embeddings.pipeline import read_labels_csv

    assert read_labels_csv(bom)["y.wav"] is None


def test_latin1_csv_is_one_clear_error(tmp_path):
    bad = _write_csv(tmp_path / "latin.csv", [("caf\u00e9.wav", "bruit")], encoding="latin-1")
    for fn in (read_label_table, load_dataset, resolve_sources):
        with pytest.raises(DataError) as e:
            fn(bad)
        msg = str(e.value)
        assert "latin.csv" in msg and "not UTF-8" in msg and "0xe9" in msg and "\n" not in msg


def test_a_csv_listing_a_clip_twice_names_the_lines(tmp_path):
    dup = tmp_path / "dup.csv"
    dup.write_text("fname,labels\nx.wav,a\ny.wav,b\nx.wav,c\n")
    for fn in (read_label_table, load_dataset, resolve_sources):
        with pytest.raises(DataError, match=r"dup\.csv.*'x\.wav' on lines 2, 4"):
            fn(dup)


# ------------------------------------------------------------------------------------------------ layouts
def test_fsdkaggle2019_layout_extract_train_curated_csv(tmp_path, shared_models):
    """FSDKaggle2019 keeps train_curated.csv beside train_curated/: `extract train_curated.csv` finds the audio."""
    root = tmp_path / "FSDKaggle2019"
    cur = _copy(_clips(3, "laughter*.wav"), root / "train_curated")
    noisy = _copy(_clips(2, "phone*.wav"), root / "train_noisy")
    _write_csv(root / "train_curated.csv", [(n, "Laughter") for n in cur])
    _write_csv(root / "train_noisy.csv", [(n, "Telephone") for n in noisy])
    (root / "vocabulary.csv").write_text("0,Laughter\n1,Telephone\n")
    ds = load_dataset(root)
    assert ds.layout == "fsdkaggle2019" and ds.subsets == ["curated"] * 3 + ["noisy"] * 2
    assert all(os.path.isfile(p) for p in ds.paths)
    assert [s.clip_id for s in resolve_sources(root / "train_curated.csv")] == cur
    summary = _extract(root / "train_curated.csv", tmp_path / "s")
    assert summary.n_stored == 3 and summary.n_failed == 0
    from embedtag.store import open_store

    store = open_store(tmp_path / "s")
    assert store.clip_ids == cur and store.labels() == [["Laughter"]] * 3
    # the whole folder: every subset, with labels, ids as in the dataset
    assert [s.clip_id for s in resolve_sources(root)] == ds.clip_ids


def test_a_csv_whose_files_mostly_do_not_exist_is_one_error_before_any_work(tmp_path, shared_models):
    names = _copy(_clips(2), tmp_path / "d")
    _write_csv(tmp_path / "d" / "list.csv", [(n, "x") for n in names] + [(f"gone{i}.wav", "x") for i in range(5)])
    with pytest.raises(DataError) as e:
        _extract(tmp_path / "d" / "list.csv", tmp_path / "s")
    msg = str(e.value)
    assert "list.csv" in msg and "5 of 7" in msg and "gone0.wav" in msg and "looked for them in" in msg
    assert not (tmp_path / "s").exists()  # nothing was written
    # a few missing files stay per-clip failures
    _write_csv(tmp_path / "d" / "few.csv", [(n, "x") for n in names] + [("gone.wav", "x")])
    summary = _extract(tmp_path / "d" / "few.csv", tmp_path / "s2")
    assert summary.n_stored == 2 and summary.n_failed == 1 and summary.failures[0][0] == "gone.wav"


def test_paths_outside_the_dataset_folder_are_refused_unless_allowed(tmp_path, shared_models):
    clip = _clips(1)[0]
    outside = tmp_path / "secret"
    _copy([clip], outside)
    d = tmp_path / "data" / "set"
    _copy(_clips(1, "keys*.wav"), d)
    inside = _clips(1, "keys*.wav")[0].name
    for bad in (f"../../secret/{clip.name}", str(outside / clip.name)):
        csv_path = _write_csv(d / "l.csv", [(inside, "keys"), (bad, "x")])
        with pytest.raises(DataError, match="outside the dataset folder.*--allow-outside-root"):
            resolve_sources(csv_path)
        with pytest.raises(DataError, match="outside"):
            _extract(csv_path, tmp_path / "s")
    ok = resolve_sources(csv_path, allow_outside_root=True)
    assert ok[1].path == str(outside / clip.name)
    # an absolute path inside the folder is fine; stored paths are absolute
    _write_csv(d / "abs.csv", [(str(d / inside), "keys")])
    assert resolve_sources(d / "abs.csv")[0].path == str(d / inside)
    s = _extract(d / "l.csv", tmp_path / "s", allow_outside_root=True)
    assert s.n_stored == 2
    from embedtag.store import open_store

    assert all(os.path.isabs(p) for p in open_store(tmp_path / "s").to_pandas(["path"])["path"])
    code, _, err = run_cli_capsys_free(["extract", str(d / "l.csv"), "--out", str(tmp_path / "s3"), "-q"])
    assert code == 1 and "outside the dataset folder" in err and "Traceback" not in err


def run_cli_capsys_free(argv):
    import subprocess
    import sys

    from conftest import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "embedtag", *argv], env=env, capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


# ------------------------------------------------------------------------------------------------ several inputs
def test_the_same_file_name_in_two_folders_gives_two_clips(tmp_path, shared_models):
    a, b = _clips(2, "speech*.wav")
    for d, f in (("d1", a), ("d2", b)):
        (tmp_path / d).mkdir()
        shutil.copy(f, tmp_path / d / "x.wav")
    ids = [s.clip_id for s in resolve_sources([tmp_path / "d1", tmp_path / "d2"])]
    assert ids == ["d1/x.wav", "d2/x.wav"]
    summary = _extract([tmp_path / "d1", tmp_path / "d2"], tmp_path / "s")
    assert summary.n_stored == 2
    # the same file named twice is one clip, not a clash
    assert [s.clip_id for s in resolve_sources([tmp_path / "d1" / "x.wav", tmp_path / "d1" / "x.wav"])] == ["x.wav"]
    # a label row matched only by file name would label two different files: an error, not a silent pick
    _write_csv(tmp_path / "labels.csv", [("x.wav", "speech")])
    with pytest.raises(DataError, match="several files.*d1/x.wav"):
        resolve_sources([tmp_path / "d1", tmp_path / "d2"], labels=tmp_path / "labels.csv")


def test_two_lists_naming_one_clip_id_for_different_files_is_an_error(tmp_path):
    a, b = _clips(2)
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    shutil.copy(a, d / "x.wav")
    shutil.copy(b, d / "sub" / "x.wav")
    _write_csv(d / "one.csv", [("x.wav", "a")])
    _write_csv(d / "two.csv", [("x.wav", "b", "sub/x.wav")], header=("fname", "labels", "path"))
    with pytest.raises(DataError, match="1 clip id.*'x.wav'.*sub/x.wav"):
        resolve_sources([d / "one.csv", d / "two.csv"])


def test_limit(tmp_path, office_copy):
    assert len(resolve_sources(office_copy, limit=2)) == 2
    assert resolve_sources(office_copy, limit=0) == []  # the first 0 inputs: nothing
    with pytest.raises(ParamError, match="limit=-1"):
        resolve_sources(office_copy, limit=-1)
    code, _, err = run_cli_capsys_free(["extract", str(office_copy), "--out", str(tmp_path / "s"), "--limit", "-1"])
    assert code == 1 and "limit=-1" in err and "Traceback" not in err and not (tmp_path / "s").exists()


def test_out_inside_the_input_folder_is_never_read_as_input(tmp_path, shared_models):
    d = tmp_path / "clips"
    _copy(_clips(3), d)
    first = _extract(d, d / "store")
    assert first.n_stored == 3 and first.n_failed == 0
    again = _extract(d, d / "store")
    assert again.n_inputs == 3 and again.n_stored == 0 and again.n_failed == 0
    # other commands reading the folder skip the store too
    assert audio_files(d)[0] == sorted(f.name for f in d.glob("*.wav"))


def test_non_utf8_file_names_do_not_crash(tmp_path, shared_models):
    d = tmp_path / "odd"
    d.mkdir()
    clip = _clips(1)[0]
    raw = os.path.join(os.fsencode(d), b"b\xff.wav")
    shutil.copy(clip, raw)
    shutil.copy(clip, d / "plain.wav")
    sources = resolve_sources(d)
    ids = [s.clip_id for s in sources]
    assert ids == ["b\\xff.wav", "plain.wav"]  # the byte as an escape: two such names stay distinct
    for s in sources:
        s.clip_id.encode("utf-8")  # valid UTF-8 for the store
        assert os.path.exists(s.path)  # the real name still opens
    assert audio_files(d)[0] == ids
    assert safe_text(b"b\xff.wav") == "b\\xff.wav" and safe_text("ok.wav") == "ok.wav"
    # extract records such a file (stored, or failed with its reason) and the store stays readable: no crash
    summary = _extract(d, tmp_path / "s")
    assert summary.n_stored + summary.n_failed == 2 and summary.n_stored >= 1
    from embedtag.store import open_store

    store = open_store(tmp_path / "s")
    assert set(store.clip_ids) | set(store.errors()["clip_id"]) == set(ids)


# ------------------------------------------------------------------------------------------------ folder rules
def test_loose_files_plus_a_sub_folder_is_read_the_same_way_by_every_entry_point(tmp_path):
    from embedtag.finetune.data import resolve_dataset
    from embedtag.profile import load_any

    d = tmp_path / "mixed"
    _copy(_clips(2, "cough*.wav"), d)
    _copy(_clips(2, "keys*.wav"), d / "keys")
    want = sorted(f.name for f in d.glob("*.wav")) + sorted("keys/" + f.name for f in (d / "keys").glob("*.wav"))
    assert [s.clip_id for s in resolve_sources(d)] == want
    assert audio_files(d)[0] == want
    for ds in (load_dataset(d), load_any(d), resolve_dataset(d)):
        assert ds.layout == "audio_folder" and ds.clip_ids == want and ds.labels == [None] * 4
    # no loose audio: the sub-folders are classes, for extract too
    shutil.rmtree(d)
    _copy(_clips(2, "cough*.wav"), d / "cough")
    _copy(_clips(1, "keys*.wav"), d / "keys")
    (d / "README.md").write_text("a dataset")
    src = resolve_sources(d)
    assert [s.labels for s in src] == [["cough"], ["cough"], ["keys"]]
    assert [s.clip_id for s in src] == load_dataset(d).clip_ids == load_any(d).clip_ids == audio_files(d)[0]


# ------------------------------------------------------------------------------------------------ matching
def test_match_clips_exact_then_unambiguous_file_name():
    ds = Dataset(["a/x.wav", "y.wav", "p/z.wav", "q/z.wav"], ["/a/x.wav", "/y.wav", "/p/z.wav", "/q/z.wav"],
                 [["1"], ["2"], ["3"], ["4"]], ["1", "2", "3", "4"], [None] * 4, [None] * 4, root="t.csv")
    assert match_clips(["y.wav", "x.wav", "b/y.wav", "nope.wav"][:2], ds) == [1, 0]
    assert match_clips(["q/z.wav", "other.wav"], ds) == [3, None]
    with pytest.raises(DataError, match="t.csv.*several files.*'z.wav'"):
        match_clips(["z.wav"], ds)  # two dataset clips are named z.wav
    with pytest.raises(DataError, match="several files"):
        match_clips(["m/x.wav", "n/x.wav"], ds)  # one row, two store clips of that name


def test_labels_for_store_refuses_an_ambiguous_file_name(tmp_path, real_store):
    from embedtag.heads import labels_for_store

    store = real_store("goldlab_oddball_novel_sounds", model="yamnet-lite")
    name = store.clip_ids[0]
    _write_csv(tmp_path / "l.csv", [(f"a/{name}", "animal"), (f"b/{name}", "bird")])
    with pytest.raises(DataError, match="several files"):
        labels_for_store(store, tmp_path / "l.csv")


# ------------------------------------------------------------------------------------------------ the contract
def test_every_entry_point_gives_the_same_clip_ids(office_copy):
    """A folder, its labels.csv dataset, the CSV, and the list of its files: the same clips, the same ids, through
    resolve_sources, audio_files, load_dataset + match_clips and the profile / finetune / benchmark resolvers."""
    from embedtag.benchmark import _match
    from embedtag.finetune.data import resolve_dataset
    from embedtag.profile import load_any

    want = sorted(f.name for f in (office_copy / "audio").iterdir())
    files = sorted((office_copy / "audio").iterdir())
    inputs = [office_copy, office_copy / "labels.csv", office_copy / "audio", files]
    for inp in inputs:
        assert sorted(s.clip_id for s in resolve_sources(inp)) == want, inp
        assert sorted(audio_files(inp)[0]) == want, inp
    for inp in inputs[:3]:
        for ds in (load_dataset(inp), load_any(inp), resolve_dataset(inp)):
            assert sorted(ds.clip_ids) == want, inp
            assert all(os.path.isabs(p) and os.path.isfile(p) for p in ds.paths)
            idx = match_clips(want, ds)
            assert [ds.clip_ids[i] for i in idx] == want

            class _Store:
                clip_ids = want

            assert [ds.clip_ids[i] for i in _match(ds, _Store())] == want
    labelled = load_dataset(office_copy)
    assert {c: s.labels for c, s in ((s.clip_id, s) for s in resolve_sources(office_copy / "labels.csv"))} == \
        labelled.labels_by_id()


# ------------------------------------------------------------------------------------------------ split
def test_split_is_stratified_reproducible_and_extractable(tmp_path, shared_data, shared_models):
    office = shared_data / "dcase2016_task2_office"
    train, test = split_dataset(office, 0.3, seed=0, out=tmp_path / "sp")
    assert len(train) == 154 and len(test) == 66 and not set(train.clip_ids) & set(test.clip_ids)
    assert (test.multi_hot().sum(0) == 6).all()  # 11 classes of 20 clips: 6 of each in test
    again, _ = split_dataset(office, 0.3, seed=0)
    other, _ = split_dataset(office, 0.3, seed=1)
    assert again.clip_ids == train.clip_ids and other.clip_ids != train.clip_ids
    # the CSVs name clips by the dataset's ids, so they label a store of the whole dataset, and extract reads them
    assert list(read_label_table(tmp_path / "sp" / "test.csv")) == test.clip_ids
    src = resolve_sources(tmp_path / "sp" / "test.csv")
    assert [s.clip_id for s in src] == test.clip_ids and all(os.path.isfile(s.path) for s in src)
    assert load_dataset(tmp_path / "sp" / "train.csv").labels == train.labels
    s = _extract(tmp_path / "sp" / "test.csv", tmp_path / "store", limit=3)
    assert s.n_stored == 3 and s.n_failed == 0
    # multi-label: every label keeps about its share on both sides
    cry = shared_data / "donateacry_cleaned"
    tr, te = split_dataset(cry, 0.25, seed=0)
    full = load_dataset(cry).multi_hot().sum(0)
    assert np.abs(te.multi_hot().sum(0) - 0.25 * full).max() <= 2
    with pytest.raises(DataError, match="--overwrite"):
        split_dataset(office, 0.3, out=tmp_path / "sp")
    for bad in (0, 1.0, -0.2, 220, float("nan")):
        with pytest.raises(ParamError, match="test_size"):
            split_dataset(office, bad)


def test_cli_split(tmp_path, shared_data, capsys):
    code, out, err = run_cli(capsys, "split", shared_data / "goldlab_oddball_novel_sounds", "--test-size", "20",
                             "--seed", "3", "--out", tmp_path / "sp", "-v")
    assert code == 0, err
    assert "20 clips" in err and "clips per label" in err
    assert len(read_label_table(tmp_path / "sp" / "test.csv")) == 20
    assert len(read_label_table(tmp_path / "sp" / "train.csv")) == 59
    code, _, err = run_cli(capsys, "split", shared_data / "goldlab_oddball_novel_sounds", "--out", tmp_path / "sp")
    assert code == 1 and "--overwrite" in err
