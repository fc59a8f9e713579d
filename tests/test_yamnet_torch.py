"""yamnet-torch: YAMNet in PyTorch, converted from the real SavedModel / TFLite file, against TensorFlow on real
audio."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest

from conftest import DATA, require
from embedtag.embeddings.audio import load_audio
from embedtag.embeddings.registry import load_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")
OFFICE = DATA / "dcase2016_task2_office" / "audio"


def _clips():
    """Real clips of different lengths (1 to 5 patches): speech, keyboard, laughter, door knock, phone."""
    require(OFFICE)
    names = ["speech001.wav", "keyboard040.wav", "laughter079.wav", "knock001.wav", "phone036.wav"]
    return [load_audio(OFFICE / n, 16000)[0] for n in names]


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDTAG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_mel_matrix_is_tensorflows(shared_models):
    """Our linear_to_mel_weight_matrix equals the constant TensorFlow baked into the TFLite file."""
    from ai_edge_litert.interpreter import Interpreter

    from embedtag.embeddings.backbones.yamnet_torch import linear_to_mel_weight_matrix

    interp = Interpreter(model_path=str(require(shared_models / "yamnet" / "yamnet.tflite")))
    mel_op = next(o for o in interp._get_ops_details() if o["op_name"] == "FULLY_CONNECTED")
    tf_mel = interp.get_tensor(int(mel_op["inputs"][1]))  # (64 bands, 257 bins)
    ours = linear_to_mel_weight_matrix()
    assert ours.shape == (257, 64) and np.all(ours[0] == 0)
    np.testing.assert_allclose(ours.T, tf_mel, atol=1e-5)  # float32 rounding (TF's own varies by ~6e-6)


def test_patches_match_tensorflow_savedmodel_and_tflite(shared_models, home):
    rng = np.random.default_rng(0)
    # + two lengths on YAMNet's patch grid: 38640 samples gets an extra patch from TF's float32 rounding, 46320 not
    clips = _clips() + [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (38640, 46320)]
    for source, ref_name in ((shared_models / "yamnet" / "saved_model", "yamnet"),
                             (shared_models / "yamnet" / "yamnet.tflite", "yamnet-lite")):
        ours = load_backbone("yamnet-torch", weights=source, device="cpu")
        assert ours.weights_path.parent == home / "weights" / "yamnet"
        a = ours.embed(clips, return_frames=True)
        b = load_backbone(ref_name).embed(clips, return_frames=True)
        assert a.embeddings.shape == (7, 1024) and a.scores.shape == (7, 521)
        assert [len(f) for f in a.frames[5:]] == [5, 5]
        for fa, fb in zip(a.frames, b.frames):
            assert fa.shape == fb.shape
            assert _cos(fa, fb).min() > 0.9999, ref_name
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        assert ours.class_names[int(a.scores[0].argmax())] == "Speech"
    assert sum(len(f) for f in a.frames) > 5  # some clips have several patches


def test_conversion_is_cached_checksummed_and_redone_when_the_source_changes(shared_models, home):
    from embedtag.embeddings.backbones.yamnet_torch import (
        ensure_converted,
        load_converted,
    )
    from embedtag.embeddings.weights import file_digest, fingerprint
    from embedtag.errors import WeightsError

    lite = require(shared_models / "yamnet" / "yamnet.tflite")
    out = ensure_converted(lite)
    side = json.loads(out.with_name(out.name + ".json").read_text())
    assert (side["source_sha256"] == fingerprint(lite)
            == "5e70987b096572dc0bfc20e6c6ee7be645e4297eb2b87a7902ae1b0c7b9e5bd3")
    assert side["sha256"] == file_digest(out) and side["source_kind"] == "tflite"
    mtime = os.stat(out).st_mtime_ns
    assert ensure_converted(lite) == out and os.stat(out).st_mtime_ns == mtime  # not converted twice
    # another source (the SavedModel) -> converted again, and the sidecar says so
    ensure_converted(shared_models / "yamnet" / "saved_model")
    assert json.loads(out.with_name(out.name + ".json").read_text())["source_kind"] == "saved_model"
    # a damaged converted file is refused by the loader, and ensure_converted replaces it
    data = bytearray(out.read_bytes())
    data[-10] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_converted(out)
    ensure_converted(shared_models / "yamnet" / "saved_model")
    load_converted(out)


@pytest.mark.parametrize("in_job", [False, True])
def test_batched_across_clips_and_batch_invariant(shared_models, home, in_job, monkeypatch):
    """One call after another, or in a job's parallel single-threaded calls (front ends and patch calls spread
    over threads): each clip gets the patches it gets alone."""
    from embedtag.embeddings.backbones import base

    bb = load_backbone("yamnet-torch", device="cpu")  # found through the mirror: no weights argument
    rng = np.random.default_rng(3)
    clips = _clips()[:3] + [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (3000, 15600, 40000, 300000)]
    monkeypatch.setattr(base, "cpu_cores", lambda: 3)
    with bb.cpu_job() if in_job else contextlib.nullcontext():
        assert bb._n_parallel == (3 if in_job else 1)
        together = bb.embed(clips, return_frames=True)
    assert (bb._executor is not None) == in_job
    for i, c in enumerate(clips):
        alone = bb.embed([c], return_frames=True)
        np.testing.assert_allclose(together.embeddings[i], alone.embeddings[0], atol=1e-4)
        np.testing.assert_allclose(together.frames[i], alone.frames[0], atol=1e-4)
    assert np.abs(together.embeddings[0] - together.embeddings[1]).max() > 0.1


def test_yamnet_resolves_to_yamnet_torch_without_tensorflow(shared_models, home, monkeypatch):
    import importlib.util

    from embedtag.embeddings.backbones.yamnet_torch import YamnetTorch

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorflow" else real(n, *a))
    bb = load_backbone("yamnet", device="cpu")
    assert isinstance(bb, YamnetTorch) and bb.name == "yamnet-torch"
    assert json.loads((home / "weights" / "yamnet" / "yamnet_torch.safetensors.json").read_text())[
        "source_kind"] == "tflite"  # without TensorFlow the TFLite file is the source
