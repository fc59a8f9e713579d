"""Dataset readers on the real metadata in ../shared and on small layouts made here."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import DATA, require
from embedtag.datasets import (
    load_dataset,
    read_esc50,
    read_folder_per_class,
    read_fsdkaggle2019,
    read_labels_csv,
    to_multi_hot,
)
from embedtag.errors import DataError


def test_fsdkaggle2019_real_metadata():
    root = require(DATA / "FSDKaggle2019.meta")
    ds = load_dataset(root)
    assert ds.layout == "fsdkaggle2019"
    # the official counts of the post-competition release
    assert ds.subsets.count("curated") == 4970
    assert ds.subsets.count("noisy") == 19815
    assert ds.subsets.count("test") == 4481
    assert len(ds.vocabulary) == 80
    with open(root / "vocabulary.csv") as f:
        assert ds.vocabulary == [row[1] for row in csv.reader(f)]
    assert ds.vocabulary[0] == "Accelerating_and_revving_and_vroom"
    y = ds.subset("curated").multi_hot()
    assert y.shape == (4970, 80) and (y.sum(1) >= 1).all()
    assert ds.subset("curated").is_multi_label  # some curated clips carry several labels
    first = ds.clip_ids.index("ac9e7a91.wav")
    assert ds.labels[first] == ["Church_bell"] and ds.paths[first].endswith("train_curated/ac9e7a91.wav")
    assert set(ds.extra["usage"].values()) == {"Public", "Private"}


def test_fsdkaggle2019_kaggle_names_and_sample_submission(tmp_path):
    vocab = ["Bark", "Meow", "Purr"]
    (tmp_path / "train_curated.csv").write_text('fname,labels\na.wav,"Bark,Meow"\nb.wav,Purr\n')
    (tmp_path / "train_noisy.csv").write_text("fname,labels\nc.wav,Meow\n")
    # no vocabulary.csv: the sample submission's column order is the vocabulary
    (tmp_path / "sample_submission.csv").write_text("fname," + ",".join(vocab) + "\nt1.wav,0,0,0\nt2.wav,0,0,0\n")
    ds = read_fsdkaggle2019(tmp_path)
    assert ds.vocabulary == vocab
    assert ds.clip_ids == ["a.wav", "b.wav", "c.wav", "t1.wav", "t2.wav"]
    assert ds.subsets == ["curated", "curated", "noisy", "test", "test"]
    assert ds.labels[3] is None
    np.testing.assert_array_equal(ds.multi_hot()[:3], [[1, 1, 0], [0, 0, 1], [0, 1, 0]])
    assert len(ds.labelled()) == 3


def test_generic_folder_real(shared_data):
    ds = load_dataset(require(shared_data / "dcase2016_task2_office"))
    assert ds.layout == "folder" and len(ds) == 220 and len(ds.vocabulary) == 11
    assert not ds.is_multi_label
    assert all(__import__("os").path.isfile(p) for p in ds.paths)
    multi = load_dataset(require(shared_data / "donateacry_cleaned"))
    assert multi.is_multi_label and "baby_cry" in multi.vocabulary
    assert (multi.multi_hot()[:, multi.vocabulary.index("baby_cry")] == 1).all()
    # the labels.csv itself, given as the dataset: the clips are found in audio/ beside it
    by_csv = load_dataset(shared_data / "dcase2016_task2_office" / "labels.csv")
    assert by_csv.paths == ds.paths


def test_labels_csv_with_folds_and_errors(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text('fname,labels,fold\nx.wav,"b,a",1\ny.wav,,2\n')
    ds = read_labels_csv(p)
    assert ds.vocabulary == ["a", "b"] and ds.labels == [["b", "a"], None] and ds.folds == [1, 2]
    with pytest.raises(DataError, match="not in the vocabulary"):
        read_labels_csv(p, vocabulary=["a"])
    bad = tmp_path / "bad.csv"
    bad.write_text("name,tag\nx.wav,a\n")
    with pytest.raises(DataError, match="bad.csv"):
        read_labels_csv(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("fname,labels\nx.wav,a\nx.wav,b\n")
    with pytest.raises(DataError, match="more than once"):
        read_labels_csv(dup)


def test_esc50_layout(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-1-A-1.wav,1,1,rooster,False,1,A\n2-1-A-0.wav,2,0,dog,True,1,A\n3-2-A-1.wav,3,1,rooster,False,2,A\n")
    ds = load_dataset(tmp_path)
    assert ds.layout == "esc50"
    assert ds.vocabulary == ["dog", "rooster"]  # ordered by target, not alphabetically by chance
    assert ds.folds == [1, 2, 3] and ds.labels[1] == ["dog"]
    assert ds.paths[0] == str(tmp_path / "audio" / "1-1-A-1.wav")
    assert read_esc50(tmp_path).clip_ids == ds.clip_ids


def test_folder_per_class(tmp_path):
    for c, names in {"cat": ["a.wav", "b.flac"], "dog": ["c.wav"], "empty": []}.items():
        (tmp_path / c).mkdir()
        for n in names:
            (tmp_path / c / n).write_bytes(b"")
    (tmp_path / "cat" / "notes.txt").write_text("not audio")
    ds = load_dataset(tmp_path)
    assert ds.layout == "folder_per_class"
    assert ds.clip_ids == ["cat/a.wav", "cat/b.flac", "dog/c.wav"]
    assert ds.vocabulary == ["cat", "dog"]
    assert read_folder_per_class(tmp_path).labels == [["cat"], ["cat"], ["dog"]]


def test_to_multi_hot_and_load_errors(tmp_path):
    np.testing.assert_array_equal(to_multi_hot([["b"], None, ["a", "b"]], ["a", "b"]), [[0, 1], [0, 0], [1, 1]])
    with pytest.raises(DataError, match="'z'"):
        to_multi_hot([["z"]], ["a"])
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not a dataset"):
        load_dataset(tmp_path / "plain")
