"""EfficientAT mn04_as written in embedtag: the real checkpoint loads strictly and tags real audio sensibly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import check_audioset_tagger, require
from embedtag.embeddings.backbones.efficientat import MelFrontEnd, kaldi_mel_banks, mn_model
from embedtag.embeddings.registry import get_spec, load_backbone
from embedtag.errors import WeightsError

CKPT = "efficientat/mn04_as_mAP_432.pt"
OFFICE = "dcase2016_task2_office/audio"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mn04(shared_models):
    require(shared_models / CKPT)
    return load_backbone("efficientat-mn04", device="cpu")


def _clip(shared_data, name, sr=32000):
    from embedtag.embeddings.audio import load_audio

    return load_audio(require(shared_data / OFFICE / name), sr)[0]


def test_registered_with_release_url_and_checksum():
    spec = get_spec("efficientat-mn04")
    assert (spec.family, spec.embedding_dim, spec.sample_rate, spec.n_classes) == ("efficientat", 384, 32000, 527)
    assert spec.weights.url.endswith("/v0.0.1/mn04_as_mAP_432.pt")
    assert spec.weights.checksum.startswith("sha256:899a8c62")


def test_real_state_dict_loads_strictly(shared_models):


    state = torch.load(require(shared_models / CKPT), map_location="cpu", weights_only=True)
    model = mn_model(0.4, 527)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) < 1.2e6  # "~1M parameters"


def test_wrong_checkpoint_is_a_weights_error(shared_models, tmp_path):


    state = torch.load(require(shared_models / CKPT), map_location="cpu", weights_only=True)
    state.pop("classifier.5.bias")
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match="bad.pt"):
        load_backbone("efficientat-mn04", weights=bad, device="cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt"):
        load_backbone("efficientat-mn04", weights=tmp_path / "junk.pt", device="cpu")


def test_speech_clips_top_on_speech(mn04, shared_data):
    waves = [_clip(shared_data, f"speech00{i}.wav") for i in (1, 2, 5)]
    out = mn04.embed(waves)
    for row in out.scores:
        assert mn04.class_names[int(np.argmax(row))] == "Speech"
    # and a non-speech clip does not: a phone ringing tops on a telephone class
    phone = mn04.embed([_clip(shared_data, "phone036.wav")]).scores[0]
    assert "Telephone" in mn04.class_names[int(np.argmax(phone))]


def test_shapes_and_batch_invariance(mn04, shared_data):
    speech = _clip(shared_data, "speech001.wav")
    waves = [speech, speech[:16000], _clip(shared_data, "knock001.wav"), speech[:48000], speech[5000:53000]]
    check_audioset_tagger(mn04, waves, 384, min_clip_difference=0.1)


def test_front_end_matches_its_definition():
    banks = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0)
    assert banks.shape == (128, 513)
    assert torch.all(banks[:, -1] == 0) and torch.all(banks >= 0) and torch.all(banks.max(dim=1).values <= 1)
    assert banks[:, 480:].sum() == 0  # nothing above fmax (bin 480 = 15 kHz)
    fe = MelFrontEnd()
    t = torch.arange(32000) / 32000
    tone = torch.sin(2 * torch.pi * 1000 * t)[None]
    mel = fe(tone)
    assert mel.shape == (1, 128, fe.n_frames(32000)) == (1, 128, 100)
    # the loudest band holds 1 kHz on the Kaldi mel scale
    centre_hz = 700 * (np.exp(np.linspace(0, 1127 * np.log1p(15000 / 700), 130)[1:-1] / 1127) - 1)
    peak = int(mel[0].mean(dim=1).argmax())
    assert abs(centre_hz[peak] - 1000) < 60


def test_is_the_default_backbone_of_encode_extract_cli_and_demo(mn04, shared_data):
    import re

    from embedtag.embeddings.pipeline import encode
    from embedtag.embeddings.registry import DEFAULT_MODEL

    assert DEFAULT_MODEL == "efficientat-mn04"
    clip = _clip(shared_data, "knock001.wav")
    np.testing.assert_allclose(encode(clip, sample_rate=32000)[0], mn04.embed([clip]).embeddings[0], atol=1e-4)
    from conftest import REPO

    assert re.search(r"^MODEL \?= efficientat-mn04$", (REPO / "Makefile").read_text(), re.M)


# ------------------------------------------------------------------------------ the family: mn10, mn40
@pytest.mark.parametrize("name,width,dim,params_m,file", [
    ("efficientat-mn10", 1.0, 960, 4.88, "mn10_as_mAP_471.pt"),
    ("efficientat-mn40", 4.0, 3840, 68.43, "mn40_as_mAP_484.pt")])
def test_family_is_registered_with_release_urls_and_the_published_sizes(name, width, dim, params_m, file):
    spec = get_spec(name)
    assert spec.weights.url == f"https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/{file}"
    assert spec.options["width_mult"] == width and spec.embedding_dim == dim
    model = mn_model(width, 527)
    assert model.embedding_dim == dim
    # parameter counts published in EfficientAT's README (4.88 M, 68.43 M): the architecture is the released one
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - params_m) < 0.01


@pytest.fixture(scope="module")
def mn10_mirror(tmp_path_factory):
    """An official-format mn10_as file (a bare state dict, torch.save) with seeded random weights."""
    torch.manual_seed(0)
    model = mn_model(1.0, 527)
    for m in model.modules():  # random BN statistics, so that the network is not near the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    mirror = tmp_path_factory.mktemp("mirror")
    (mirror / "efficientat").mkdir()
    torch.save(model.state_dict(), mirror / "efficientat" / "mn10_as_mAP_471.pt")
    return mirror


def test_mn10_loads_the_official_format_and_is_batch_invariant(mn10_mirror, shared_data, monkeypatch):
    monkeypatch.setenv("EMBEDTAG_WEIGHTS_DIR", str(mn10_mirror))
    bb = load_backbone("efficientat-mn10", device="cpu")
    assert bb.weights_path == mn10_mirror / "efficientat" / "mn10_as_mAP_471.pt" and bb.embedding_dim == 960
    speech = _clip(shared_data, "speech001.wav")
    waves = [speech, speech[:16000], _clip(shared_data, "knock001.wav")]
    together = bb.embed(waves)
    assert together.embeddings.shape == (3, 960) and together.scores.shape == (3, 527)
    assert np.isfinite(together.embeddings).all() and together.embeddings.std() > 0
    for i, w in enumerate(waves):
        np.testing.assert_allclose(together.embeddings[i], bb.embed([w]).embeddings[0], atol=1e-4)
    # the backbone's trunk (its BatchNorms folded into the convs) is the checkpoint's own network's forward
    ref = mn_model(1.0, 527)
    ref.load_state_dict(torch.load(bb.weights_path, weights_only=True))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.model.modules())
    with torch.inference_mode():
        logits, emb = ref.eval()(bb.front_end(torch.from_numpy(speech[None])).unsqueeze(1))
    np.testing.assert_allclose(together.embeddings[0], emb[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(together.scores[0], torch.sigmoid(logits[0]).numpy(), rtol=1e-4, atol=1e-6)


def test_a_checkpoint_of_another_width_is_refused(shared_models):
    with pytest.raises(WeightsError, match="width 1.0"):
        load_backbone("efficientat-mn10", weights=require(shared_models / CKPT), device="cpu")


def test_a_job_runs_single_threaded_calls_in_parallel_then_restores_the_threads(mn04, shared_data, monkeypatch):
    """Inside a job (the pipeline's cpu_job) the model's calls run single-threaded, in parallel threads, one per core;
    the caller's thread count comes back afterwards, the embeddings are those of each clip alone, and a failing
    call fails the job instead of hanging it."""
    import threading

    from embedtag.embeddings.backbones import base
    from embedtag.embeddings.pipeline import encode

    names = ("speech001.wav", "knock001.wav", "doorslam001.wav", "keysDrop001.wav", "phone036.wav")
    files = [require(shared_data / OFFICE / n) for n in names]
    seen = []
    real = mn04._forward

    def spy(x):
        seen.append((torch.get_num_threads(), threading.current_thread().name, torch.is_inference_mode_enabled()))
        return real(x)

    monkeypatch.setattr(mn04, "_forward", spy)
    monkeypatch.setattr(base, "cpu_cores", lambda: 3)
    torch.set_num_threads(2)  # the caller's own count
    try:
        emb = encode(files, mn04, batch_size=8)
        assert torch.get_num_threads() == 2 and mn04._n_parallel == 1
    finally:
        torch.set_num_threads(1)  # the module's one_torch_thread
    assert {t for t, _, _ in seen} == {1} and all(inference for _, _, inference in seen)
    assert len({name for _, name, _ in seen}) > 1 and all(name.startswith(mn04.name) for _, name, _ in seen)
    alone = np.stack([mn04.embed([_clip(shared_data, n)]).embeddings[0] for n in names])
    np.testing.assert_allclose(emb, alone, atol=1e-4)

    def failing(x):
        if x.shape[-1] > 100_000:
            raise RuntimeError("forward failed")
        return real(x)

    monkeypatch.setattr(mn04, "_forward", failing)
    with mn04.cpu_job(), pytest.raises(RuntimeError, match="forward failed"):
        mn04.embed([_clip(shared_data, n) for n in names] + [np.zeros(200_000, np.float32)])
    assert mn04._n_parallel == 1


def test_cpu_calls_hold_at_most_max_call_s_cpu_of_audio_with_the_same_embeddings(mn04, shared_data, monkeypatch):
    """On CPU a batch of equal-length windows is cut into calls of at most ``max_call_s_cpu`` seconds (one window
    at least), which changes no embedding: rows of a same-length call are independent."""
    from embedtag.embeddings.backbones._torch_util import same_length_batches

    waves = [np.zeros(n, np.float32) for n in (100, 100, 100, 100, 100, 40, 40, 400)]
    assert list(same_length_batches(waves, 32)) == [[0, 1, 2, 3, 4], [5, 6], [7]]
    assert list(same_length_batches(waves, 32, max_samples=200)) == [[0, 1], [2, 3], [4], [5, 6], [7]]
    assert list(same_length_batches(waves, 2, max_samples=10_000)) == [[0, 1], [2, 3], [4], [5, 6], [7]]

    speech = _clip(shared_data, "speech001.wav")
    seven_s = [np.resize(np.roll(speech, 997 * k), 7 * 32000).astype(np.float32) for k in range(6)]
    ten_s = [np.resize(np.roll(speech, 1009 * k), 10 * 32000).astype(np.float32) for k in range(3)]
    rows, real = [], mn04._forward

    def spy(x):
        rows.append((x.shape[0], x.shape[-1]))
        return real(x)

    monkeypatch.setattr(mn04, "_forward", spy)
    assert mn04.max_call_s_cpu == 15.0
    together = mn04.embed(seven_s + ten_s).embeddings
    assert sorted(rows) == [(1, 320000)] * 3 + [(2, 224000)] * 3  # 14 s and 10 s calls, none of 42 or 30 s
    monkeypatch.setattr(mn04, "max_call_s_cpu", None)
    rows.clear()
    whole = mn04.embed(seven_s + ten_s).embeddings
    assert sorted(rows) == [(3, 320000), (6, 224000)]  # only the batch size limits a call
    np.testing.assert_allclose(together, whole, atol=1e-5)
