"""Backbones on real weights (YAMNet SavedModel and TFLite) and on a Cnn14 checkpoint made here (PANNs)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from conftest import DATA, require
from embedtag.embeddings.audio import load_audio
from embedtag.embeddings.registry import list_backbones, load_backbone
from embedtag.errors import WeightsError

OFFICE = DATA / "dcase2016_task2_office" / "audio"


def _clips(sample_rate, classes=("speech", "keyboard", "doorslam", "phone")):
    """The first real clip of each class (speech first)."""
    require(OFFICE)
    return [load_audio(sorted(OFFICE.glob(f"{c}*.wav"))[0], sample_rate)[0] for c in classes]


@pytest.fixture(scope="module")
def yamnet(shared_models):
    return load_backbone("yamnet")


@pytest.fixture(scope="module")
def yamnet_lite(shared_models):
    return load_backbone("yamnet-lite")


def test_registry_lists_backbones_with_dims():
    specs = {s.name: s for s in list_backbones()}
    assert specs["panns-cnn14"].embedding_dim == 2048 and specs["yamnet"].embedding_dim == 1024
    assert specs["yamnet-lite"].sample_rate == 16000 and specs["panns-cnn14"].sample_rate == 32000


def test_yamnet_savedmodel_and_tflite_agree_and_tag_speech(yamnet, yamnet_lite):
    clips = _clips(16000)
    a, b = yamnet.embed(clips), yamnet_lite.embed(clips)
    assert a.embeddings.shape == (4, 1024) and a.scores.shape == (4, 521)
    cos = (a.embeddings * b.embeddings).sum(1) / (np.linalg.norm(a.embeddings, axis=1) *
                                                  np.linalg.norm(b.embeddings, axis=1))
    assert cos.min() > 0.999
    for out in (a, b):
        assert yamnet.class_names[int(out.scores[0].argmax())] == "Speech"
        # the keyboard clip is not speech: its top class is about typing
        assert "typ" in yamnet.class_names[int(out.scores[1].argmax())].lower() or \
               "keyboard" in yamnet.class_names[int(out.scores[1].argmax())].lower()


@pytest.mark.parametrize("which", ["yamnet", "yamnet_lite"])
def test_yamnet_is_batch_invariant(which, request):
    bb = request.getfixturevalue(which)
    rng = np.random.default_rng(1)
    clips = _clips(16000) + [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (3000, 15600, 40000, 200001)]
    together = bb.embed(clips, return_frames=True)
    for i, c in enumerate(clips):
        alone = bb.embed([c], return_frames=True)
        np.testing.assert_allclose(together.embeddings[i], alone.embeddings[0], atol=1e-4)
        np.testing.assert_allclose(together.frames[i], alone.frames[0], atol=1e-4)
        # packed (TF) or padded to whole hops (TFLite), a clip gets the patches of one plain call on it
        np.testing.assert_allclose(together.frames[i], bb._run(c)[1], atol=1e-4)


def test_yamnet_lite_runs_a_batch_on_parallel_interpreters_with_the_same_result(shared_models, monkeypatch):
    """A batch runs on single-threaded interpreters in parallel threads, a lone clip on one with every core:
    the embeddings are bit-identical either way, and a failing call fails its batch instead of hanging it."""
    from embedtag.embeddings.backbones import yamnet as yamnet_mod

    bb = load_backbone("yamnet-lite")
    bb._n_parallel = 3  # more than this machine may have cores: the result must not depend on the count
    rng = np.random.default_rng(2)
    clips = _clips(16000) + [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (3000, 40000, 200001)]
    together = bb.embed(clips, return_frames=True)
    assert len(bb._pool) == 3 and all(c.interp is not bb._solo.interp for c in bb._pool)
    for i, c in enumerate(clips):
        alone = bb.embed([c], return_frames=True)
        np.testing.assert_array_equal(together.embeddings[i], alone.embeddings[0])
        np.testing.assert_array_equal(together.frames[i], alone.frames[0])
        np.testing.assert_array_equal(together.scores[i], alone.scores[0])

    real_call = yamnet_mod._LiteCall.__call__

    def failing(self, waveform):
        if waveform.size > 100_000:
            raise RuntimeError("invoke failed")
        return real_call(self, waveform)

    monkeypatch.setattr(yamnet_mod._LiteCall, "__call__", failing)
    with pytest.raises(RuntimeError, match="invoke failed"):
        bb.embed(clips)


def test_yamnet_tf_runs_packed_calls_in_parallel_with_the_same_result(shared_models, monkeypatch):
    """A batch's packed calls run in parallel threads: the same embeddings as one call after another, and a
    failing call fails its batch instead of hanging it."""
    import tensorflow as tf

    bb = load_backbone("yamnet")
    rng = np.random.default_rng(3)
    clips = _clips(16000) + [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (3000, 40000, 200001, 250000)]
    bb._n_parallel = 1
    serial = bb.embed(clips, return_frames=True)
    bb._n_parallel = 3  # more than this machine may have cores: the result must not depend on the count
    calls = []
    real_run = bb._run
    monkeypatch.setattr(bb, "_run", lambda w: calls.append(w.size) or real_run(w))
    parallel = bb.embed(clips, return_frames=True)
    assert len(calls) >= 3 and bb._executor is not None
    # the same patches of the same packed calls: equal up to how TensorFlow's pool split each op's work
    tol = 0 if tf.config.threading.get_intra_op_parallelism_threads() == 1 else 1e-5
    np.testing.assert_allclose(parallel.embeddings, serial.embeddings, atol=tol)
    np.testing.assert_allclose(parallel.scores, serial.scores, atol=tol)
    for a, b in zip(parallel.frames, serial.frames):
        np.testing.assert_allclose(a, b, atol=tol)

    def failing(w):
        if w.size > 200_000:
            raise RuntimeError("call failed")
        return real_run(w)

    monkeypatch.setattr(bb, "_run", failing)
    with pytest.raises(RuntimeError, match="call failed"):
        bb.embed(clips)


@pytest.mark.parametrize("before", ["", "tf.config.threading.set_intra_op_parallelism_threads(2)",
                                    "tf.constant(1.0) + 1"])
def test_yamnet_tf_threads_are_set_only_where_embedtag_starts_tensorflow(shared_models, before):
    """Fresh process: ops on one thread, one packed call per core. A user who set TensorFlow's threads, or started
    it, first keeps theirs, and calls run one after another."""
    import subprocess
    import sys

    code = ("import os, tensorflow as tf; from embedtag.embeddings.registry import load_backbone; "
            f"{before or 'pass'}; bb = load_backbone('yamnet', device='cpu'); "
            "print(bb._n_parallel, tf.config.threading.get_intra_op_parallelism_threads(), "
            "len(os.sched_getaffinity(0)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-2000:]
    n_parallel, intra, cores = map(int, r.stdout.split()[-3:])
    if not before:
        assert (n_parallel, intra) == (min(8, cores), 1)
    else:
        assert n_parallel == 1 and intra == (2 if "threading" in before else 0)


def test_patch_count_follows_yamnets_float32_rounding(yamnet_lite):
    """On the patch grid (PATCH + k * HOP samples) YAMNet itself sometimes pads one more hop; n_patches agrees."""
    from embedtag.embeddings.backbones.yamnet import n_patches

    for n in (100, 15600, 15601, 38640, 38639, 46320, 207600, 207601):
        assert yamnet_lite._run(np.zeros(n, np.float32))[1].shape[0] == n_patches(n), n
    assert n_patches(38640) == 5 and n_patches(46320) == 5  # k=3 gets the extra patch, k=4 does not


# ---------------------------------------------------------------------------------------------- PANNs
@pytest.fixture(scope="module")
def cnn14_checkpoint(tmp_path_factory):
    """An official-format Cnn14 checkpoint ({"model": state_dict}) with seeded random weights, saved in fp16
    (half the size, under the 3e8-byte threshold at which panns_inference would wget over it)."""
    torch = pytest.importorskip("torch")
    from embedtag.embeddings.backbones.panns import PANNS_CONFIG, import_panns_models

    torch.manual_seed(0)
    model = import_panns_models().Cnn14(**PANNS_CONFIG)
    # random BN statistics so that the network is not an identity-ish map
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    mirror = tmp_path_factory.mktemp("mirror")
    path = mirror / "panns" / "Cnn14_mAP=0.431.pth"
    path.parent.mkdir()
    torch.save({"model": {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                "iteration": 0}, path)
    return path


def test_panns_loads_official_format_through_the_mirror(cnn14_checkpoint, monkeypatch):
    monkeypatch.setenv("EMBEDTAG_WEIGHTS_DIR", str(cnn14_checkpoint.parents[1]))
    digest, mtime = hashlib.sha256(cnn14_checkpoint.read_bytes()).hexdigest(), os.stat(cnn14_checkpoint).st_mtime_ns
    bb = load_backbone("panns-cnn14", device="cpu")
    assert bb.weights_path == cnn14_checkpoint
    clips = _clips(32000)[:2]
    out = bb.embed(clips)
    assert out.embeddings.shape == (2, 2048) and out.scores.shape == (2, 527)
    assert np.isfinite(out.embeddings).all() and out.embeddings.std() > 0
    # our trunk reproduces the network's own forward
    import torch

    with torch.inference_mode():
        ref = bb.model(torch.from_numpy(np.stack([np.pad(c, (0, max(0, 32000 - c.size))) for c in clips[:1]])))
    np.testing.assert_allclose(out.embeddings[0], ref["embedding"][0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.scores[0], ref["clipwise_output"][0].numpy(), rtol=1e-4, atol=1e-6)
    # the user's checkpoint is never modified, deleted or re-downloaded
    assert cnn14_checkpoint.exists()
    assert hashlib.sha256(cnn14_checkpoint.read_bytes()).hexdigest() == digest
    assert os.stat(cnn14_checkpoint).st_mtime_ns == mtime


def test_panns_is_batch_invariant_and_pads_short_clips(cnn14_checkpoint):
    bb = load_backbone("panns-cnn14", weights=cnn14_checkpoint, device="cpu")
    rng = np.random.default_rng(2)
    clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (3200, 32000, 32000, 48000)]
    together = bb.embed(clips)
    for i, c in enumerate(clips):
        np.testing.assert_allclose(together.embeddings[i], bb.embed([c]).embeddings[0], atol=1e-4)


def test_panns_rejects_a_checkpoint_of_another_architecture(tmp_path):
    torch = pytest.importorskip("torch")
    bad = tmp_path / "other.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, bad)
    with pytest.raises(WeightsError, match="does not match the Cnn14"):
        load_backbone("panns-cnn14", weights=bad, device="cpu")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="not a loadable"):
        load_backbone("panns-cnn14", weights=junk, device="cpu")


# ---------------------------------------------------------------------------------------------- GPU check
@pytest.mark.slow
def test_gpu_check_smoke_runs_on_cpu_and_writes_its_json(tmp_path):
    """benchmarks/gpu_check.sh --smoke: every measurement path runs (here on CPU) and the JSON says what it saw."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "gpu_check.json"
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    _probe_wheel(wheels)  # stands in for benchmarks/gpu_wheels.sh's downloads (tests reach no registry)
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", "--models",
                        "efficientat-mn04", "--out", str(out)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHON=sys.executable, WHEEL_DIR=str(wheels), GPU_SITE_DIR=str(site)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (site / "embedtag_wheel_probe.py").read_text() == "PROBE = 1\n"  # the carried wheels were installed
    res = json.loads(out.read_text())
    assert res["smoke"] and res["machine"]["device"] in ("cpu", "cuda") and not res["skipped"]
    mn04 = res["backbones"]["efficientat-mn04"]
    for set_name in ("short", "long"):
        runs = mn04[f"model_only_{set_name}"]
        assert {r["fp16_autocast"] for r in runs} == {True, False} and all(r["clips_per_s"] > 0 for r in runs)
        e2e = mn04[f"end_to_end_{set_name}"]
        assert e2e and all(r["clips"] == res["sizes"][f"n_{set_name}"] and r["e2e_over_model_only"] > 0 for r in e2e)
    assert res["finetune"]["amp"]["steps_per_s"] > 0 and res["finetune"]["fp32"]["steps_per_s"] > 0


def _probe_wheel(folder) -> None:
    """A minimal pure-Python wheel (module ``embedtag_wheel_probe``), as pip download would leave one."""
    import zipfile

    folder.mkdir(parents=True)
    info = "embedtag_wheel_probe-1.0.dist-info"
    with zipfile.ZipFile(folder / "embedtag_wheel_probe-1.0-py3-none-any.whl", "w") as z:
        z.writestr("embedtag_wheel_probe.py", "PROBE = 1\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: embedtag-wheel-probe\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", f"embedtag_wheel_probe.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")


def test_gpu_check_stops_at_once_when_audio_io_does_not_import(tmp_path):
    """On a machine whose image lacks soundfile (the lent GPU machines), the check says so and which script brings
    the wheels, in seconds, before any measurement (and writes no JSON)."""
    import subprocess
    import sys

    from conftest import REPO

    (tmp_path / "soundfile.py").write_text("raise ImportError('no libsndfile here')\n")
    out = tmp_path / "gpu_check.json"
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(tmp_path),
                                WHEEL_DIR=str(tmp_path / "none")))
    assert r.returncode != 0
    assert "cannot import soundfile (ImportError: no libsndfile here)" in r.stderr
    assert "gpu_wheels.sh" in r.stderr and not out.exists()


@pytest.mark.parametrize("model", ["efficientat-mn04", "efficientat-dymn04", "panns-cnn14"])
def test_gpu_check_makes_weights_of_each_real_architecture(model, tmp_path):
    """The GPU check's random checkpoints load strictly into the backbone they are for (a dymn file is no mn)."""
    from benchmarks.gpu_check import make_weights

    path = make_weights(model, tmp_path)
    bb = load_backbone(model, weights=path, device="cpu")
    out = bb.embed([np.zeros(32000, np.float32)])
    assert out.embeddings.shape == (1, bb.embedding_dim) and np.isfinite(out.embeddings).all()


def test_yamnet_refuses_a_device_it_cannot_use(shared_models):
    from embedtag.embeddings.registry import load_backbone
    from embedtag.errors import ParamError

    with pytest.raises(ParamError, match="unknown device 'tpu'"):
        load_backbone("yamnet-lite", device="tpu")
    with pytest.raises(ParamError, match="yamnet-lite runs on the CPU only"):
        load_backbone("yamnet-lite", device="cuda")
    assert load_backbone("yamnet-lite", device="cpu").device == "cpu"
