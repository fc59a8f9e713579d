"""Dataset profile (`embedtag profile`): statistics and flagged clips on real audio and real metadata."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from conftest import DATA, require, run_cli
from embedtag.errors import DataError
from embedtag.profile import clip_levels, profile_dataset

GOLDLAB = "goldlab_oddball_novel_sounds"


@pytest.fixture
def flawed_dataset(tmp_path):
    """labels.csv + audio/: eight real DCASE office clips, plus a silent clip, a clipped clip (a real clip driven
    20x into full scale), a too-short clip, a corrupt file and one listed but missing."""
    src = require(DATA / "dcase2016_task2_office")
    rows = list(csv.DictReader(open(src / "labels.csv", encoding="utf-8")))[::27][:8]
    root = tmp_path / "flawed"
    (root / "audio").mkdir(parents=True)
    out = [(r["fname"], r["labels"]) for r in rows]
    for name, _ in out:
        (root / "audio" / name).write_bytes((src / "audio" / name).read_bytes())
    x, sr = sf.read(src / "audio" / rows[0]["fname"], dtype="float32")
    sf.write(root / "audio" / "silent.wav", np.zeros(sr * 2, np.float32), sr, subtype="PCM_16")
    sf.write(root / "audio" / "clipped.wav", np.clip(x / max(np.abs(x).max(), 1e-9) * 20, -1, 1), sr,
             subtype="PCM_16")
    sf.write(root / "audio" / "short.wav", x[: int(0.05 * sr)], sr, subtype="PCM_16")
    (root / "audio" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    label = rows[0]["labels"]
    out += [("silent.wav", label), ("clipped.wav", label), ("short.wav", label), ("corrupt.wav", label),
            ("missing.wav", label)]
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["fname", "labels"])
        w.writerows(out)
    return root, [name for name, _ in out[:8]]


def test_flags_silent_clipped_short_corrupt_and_missing_clips_by_name(flawed_dataset):
    root, real = flawed_dataset
    p = profile_dataset(root)
    assert p.flagged("silent") == ["silent.wav"]
    assert p.flagged("clipped") == ["clipped.wav"]
    assert p.flagged("too_short") == ["short.wav"]
    assert p.flagged("unreadable") == ["corrupt.wav"]
    assert p.flagged("missing") == ["missing.wav"]
    assert not set(real) & {f.clip_id for f in p.flags}  # the untouched real clips are not flagged
    assert p.n_clips == 13 and p.n_readable == 11
    assert p.sample_rates == {44100: 11} and p.channels == {1: 11}
    clipped = next(f for f in p.flags if f.kind == "clipped")
    assert "% of samples" in clipped.detail and clipped.path.endswith("clipped.wav")
    # the histogram and the statistics describe the readable clips
    assert sum(p.duration_histogram["counts"]) == 11
    assert p.duration_s_stats["min"] == pytest.approx(0.05, abs=1e-3)
    assert p.total_duration_s == pytest.approx(sum(sf.info(root / "audio" / n).duration for n in
                                                   real + ["silent.wav", "clipped.wav", "short.wav"]), rel=1e-6)
    # headers only: no decoding, so no level flags, but durations and short clips still
    h = profile_dataset(root, levels=False)
    assert h.flagged("silent") == [] and h.flagged("clipped") == [] and h.flagged("too_short") == ["short.wav"]


def test_clip_levels_of_real_audio():
    f = require(DATA / GOLDLAB / "audio" / "ANBEE.flac")
    peak, rms_dbfs, frac = clip_levels(f)
    x, _ = sf.read(f, dtype="float32")
    assert peak == pytest.approx(np.abs(x).max())
    assert rms_dbfs == pytest.approx(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))), abs=1e-4)
    assert 0 <= frac < 0.001


def test_real_dataset_statistics(shared_data):
    p = profile_dataset(require(shared_data / GOLDLAB))
    labels = list(csv.DictReader(open(shared_data / GOLDLAB / "labels.csv", encoding="utf-8")))
    assert p.n_clips == p.n_readable == len(labels) == 79
    assert p.layout == "folder" and p.subsets == {"all": 79}
    expected = {}
    for r in labels:
        expected[r["labels"]] = expected.get(r["labels"], 0) + 1
    assert p.label_counts == {"all": expected}
    assert p.labels_per_clip == {1: 79}
    assert p.sample_rates == {sf.info(shared_data / GOLDLAB / "audio" / labels[0]["fname"]).samplerate: 79}
    # the labels CSV alone finds its audio/ folder, as `embedtag extract` does; the audio folder alone is unlabelled
    c = profile_dataset(shared_data / GOLDLAB / "labels.csv", levels=False)
    assert c.n_readable == 79 and c.label_counts == p.label_counts and c.durations_s == p.durations_s
    a = profile_dataset(shared_data / GOLDLAB / "audio", levels=False)
    assert a.layout == "audio_folder" and a.n_readable == 79 and a.n_labelled == 0 and a.labels_per_clip == {0: 79}


def test_fsdkaggle2019_metadata_per_subset_without_audio(shared_data):
    meta = require(shared_data / "FSDKaggle2019.meta")
    p = profile_dataset(meta, levels=False)
    assert p.layout == "fsdkaggle2019"
    assert p.subsets == {"curated": 4970, "noisy": 19815, "test": 4481}
    assert set(p.label_counts) == {"curated", "noisy", "test"} and p.n_labels == 80
    rows = list(csv.DictReader(open(meta / "train_curated_post_competition.csv", encoding="utf-8")))
    n_speech = sum("Male_speech_and_man_speaking" in r["labels"].split(",") for r in rows)
    assert p.label_counts["curated"]["Male_speech_and_man_speaking"] == n_speech
    assert p.multi_label and max(p.labels_per_clip) > 1
    assert len(p.flagged("missing")) == p.n_clips and p.n_readable == 0  # no audio on this machine


def test_cli_profile_json_and_table(flawed_dataset, capsys):
    root, _ = flawed_dataset
    code, out, _ = run_cli(capsys, "profile", root, "--format", "json")
    assert code == 0
    d = json.loads(out)
    assert d["flag_counts"] == {"missing": 1, "unreadable": 1, "silent": 1, "clipped": 1, "too_short": 1}
    assert d == json.loads(json.dumps(profile_dataset(root).as_dict()))  # the CLI prints what the API returns
    code, out, _ = run_cli(capsys, "profile", root)
    assert code == 0 and "silent.wav" in out and "clipped.wav" in out and "duration histogram" in out


def test_bad_input_is_one_line_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "profile", tmp_path / "nope")
    assert code == 1 and "nope" in err and "Traceback" not in err
    with pytest.raises(DataError, match="clip_level"):
        profile_dataset(tmp_path, clip_level=1.5)
