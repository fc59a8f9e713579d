"""Audio front end on real files and on the awkward ones users have."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from conftest import DATA, require
from embedtag.embeddings import audio as A
from embedtag.errors import AudioError


def test_real_wav_decodes_to_mono_at_target_rate():
    path = require(DATA / "dcase2016_task2_office" / "audio" / "speech001.wav")
    info = A.audio_info(path)
    x, sr = A.load_audio(path, 16000)
    assert sr == 16000 and x.dtype == np.float32 and x.ndim == 1
    assert abs(x.size / 16000 - info.duration_s) < 0.01
    assert 0 < np.abs(x).max() <= 1.0


def test_stereo_48k_int16_is_mixed_and_resampled(tmp_path):
    t = np.arange(48000) / 48000
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, -left * 0 + left], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(path, (stereo * 32767).astype(np.int16), 48000, subtype="PCM_16")
    x, sr = A.load_audio(path, 16000)
    assert sr == 16000 and x.shape == (16000,)
    # a 440 Hz tone survives resampling: the spectrum peaks at 440 Hz
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * 16000 / x.size - 440) < 2


@pytest.mark.parametrize("content,reason", [(b"", "empty file"), (b"not audio at all" * 10, "cannot decode")])
def test_bad_files_name_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError) as exc:
        A.load_audio(path, 16000)
    assert str(path) in str(exc.value) and reason in str(exc.value)


def test_unsupported_extension_and_too_long(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(AudioError, match="unsupported file type"):
        A.audio_info(txt)
    long = tmp_path / "long.flac"
    sf.write(long, np.zeros(16000 * 5, np.float32), 16000)
    with pytest.raises(AudioError, match="too long"):
        A.load_audio(long, 16000, max_duration_s=2)


def test_iter_windows_streams_the_same_samples_as_whole_decoding(tmp_path):
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(44100 * 7)).astype(np.float32)
    path = tmp_path / "noise.flac"
    sf.write(path, x, 44100)
    whole, _ = A.load_audio(path, 32000)
    wins = list(A.iter_windows(path, 32000, window_s=2.0))
    assert [w.size for w in wins[:-1]] == [64000] * 3 and 0 < wins[-1].size <= 64000
    streamed = np.concatenate(wins)
    assert abs(streamed.size - whole.size) <= 2
    n = min(streamed.size, whole.size)
    # streaming and one-shot soxr differ only at chunk seams, far below the signal level
    assert np.sqrt(np.mean((streamed[:n] - whole[:n]) ** 2)) < 1e-3


def test_peak_and_rms():
    assert A.peak_and_rms_dbfs(np.zeros(10, np.float32))[1] == float("-inf")
    peak, rms = A.peak_and_rms_dbfs(np.full(100, 0.5, np.float32))
    assert peak == 0.5 and abs(rms - 20 * np.log10(0.5)) < 1e-6


def test_a_truncated_wav_decodes_what_is_there_and_says_so(tmp_path, caplog):
    real = require(DATA / "dcase2016_task2_office" / "audio" / "speech001.wav")
    whole = real.read_bytes()
    assert A.wav_truncation(real) is None
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: len(whole) // 2])
    declared, present = A.wav_truncation(cut)
    assert present < declared and present == len(whole) // 2 - (len(whole) - declared)
    with caplog.at_level("WARNING", logger="embedtag"):
        x, info = A.read_audio(cut)
    assert f"{cut} is truncated" in caplog.text
    full, _ = A.read_audio(real)
    assert 0 < x.size < full.size and np.array_equal(x, full[: x.size])  # the samples that are there, unchanged


def test_a_file_name_that_is_not_utf8_decodes(tmp_path):
    import os

    real = require(DATA / "dcase2016_task2_office" / "audio" / "speech001.wav")
    odd = os.path.join(os.fsencode(tmp_path), b"b\xff.wav")
    with open(odd, "wb") as f:
        f.write(real.read_bytes())
    x, _ = A.read_audio(os.fsdecode(odd))
    windows = list(A.iter_windows(os.fsdecode(odd), 16000, 1.0))
    assert (np.array_equal(x, A.read_audio(real)[0])
            and sum(w.size for w in windows) == A.read_audio(real, 16000)[0].size)
