"""EfficientAT dynamic MobileNets (dymn04/10/20) written in embedtag.

No real dymn checkpoint is among the shared assets, so the checkpoint path is tested on the real architecture with
seeded random weights saved as upstream releases them (a bare state dict written by torch.save)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import check_audioset_tagger, require, run_cli
from embedtag.embeddings.backbones.efficientat_dymn import DynamicConv, DynamicReLU, dymn_model
from embedtag.embeddings.registry import get_spec, load_backbone
from embedtag.errors import WeightsError

OFFICE = "dcase2016_task2_office/audio"
RELEASE = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clip(shared_data, name, sr=32000):
    from embedtag.embeddings.audio import load_audio

    return load_audio(require(shared_data / OFFICE / name), sr)[0]


def _calibrate(model: torch.nn.Module, mels: torch.Tensor) -> torch.nn.Module:
    """Upstream's seeded random initialisation, with every BatchNorm's statistics set layer by layer in eval mode
    from what reaches it for ``mels``: random statistics shrink or blow up the activations block after block until
    every clip gives (nearly) the same embedding, or inf, and a batch-invariance check would then prove nothing."""
    def measure(bn, inputs):
        v = inputs[0].transpose(0, 1).flatten(1)
        bn.running_mean.copy_(v.mean(1))
        bn.running_var.copy_(v.var(1))

    hooks = [m.register_forward_pre_hook(measure) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval().forward_features(mels)
    for h in hooks:
        h.remove()
    return model


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, shared_data):
    """A weights folder holding an official-format dymn04_as.pt (seeded random weights)."""
    from embedtag.embeddings.backbones.efficientat import MelFrontEnd

    torch.manual_seed(0)
    names = ("speech002.wav", "phone036.wav", "keysDrop001.wav", "laughter005.wav")
    waves = [np.pad(w[:48000], (0, max(0, 48000 - len(w)))) for w in (_clip(shared_data, n) for n in names)]
    with torch.no_grad():
        mels = MelFrontEnd()(torch.from_numpy(np.stack(waves)))
    root = tmp_path_factory.mktemp("mirror")
    (root / "efficientat").mkdir()
    torch.save(_calibrate(dymn_model(0.4, 527), mels.unsqueeze(1)).state_dict(), root / "efficientat" / "dymn04_as.pt")
    return root


@pytest.fixture()
def dymn04(mirror, monkeypatch):
    monkeypatch.setenv("EMBEDTAG_WEIGHTS_DIR", str(mirror))
    return load_backbone("efficientat-dymn04", device="cpu")


# ------------------------------------------------------------------------------------------ registry, sizes
@pytest.mark.parametrize("name,width,dim,file", [
    ("efficientat-dymn04", 0.4, 384, "dymn04_as.pt"),
    ("efficientat-dymn10", 1.0, 960, "dymn10_as.pt"),
    ("efficientat-dymn20", 2.0, 1920, "dymn20_as_mAP_493.pt")])
def test_registered_with_upstreams_release_files(name, width, dim, file):
    spec = get_spec(name)
    assert spec.weights.url == RELEASE + file and spec.weights.relpath == file and spec.weights.family == "efficientat"
    assert spec.options["width_mult"] == width and spec.embedding_dim == dim
    assert (spec.sample_rate, spec.n_classes) == (32000, 527)
    assert spec.impl.endswith("efficientat_dymn:DyMNBackbone")


@pytest.mark.parametrize("width,dim,n_params,published_m", [
    (0.4, 384, 1_961_239, 1.97), (1.0, 960, 10_548_479, 10.57), (2.0, 1920, 39_966_143, 40.02)])
def test_sizes_match_upstream(width, dim, n_params, published_m):
    """Exact counts are those of upstream's own DyMN code at each width (checked once against it); its README's
    "Params (Millions)" (1.97 / 10.57 / 40.02) count the BatchNorm running statistics too."""
    model = dymn_model(width, 527)
    params = sum(p.numel() for p in model.parameters())
    running = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert params == n_params
    assert round((params + running) / 1e6, 2) == published_m
    assert model.embedding_dim == dim == model.classifier[2].in_features and model.classifier[5].out_features == 527


def test_embedtag_models_lists_the_three(capsys):
    code, out, _ = run_cli(capsys, "models", "--format", "json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0
    assert [rows[f"efficientat-dymn{w}"]["embedding_dim"] for w in ("04", "10", "20")] == [384, 960, 1920]


# ------------------------------------------------------------------------------------------ building blocks
def test_dynamic_conv_convolves_each_example_with_its_own_mixed_kernel():
    torch.manual_seed(1)
    for kernel, groups, stride, c_in, c_out in ((3, 8, 2, 8, 8), (1, 1, 1, 8, 16), (5, 8, 1, 8, 8)):
        conv = DynamicConv(c_in, c_out, 12, kernel, stride, (kernel - 1) // 2, groups=groups)
        torch.nn.init.normal_(conv.residuals[0].weight)
        x, ctx = torch.randn(3, c_in, 9, 11), torch.randn(3, 12)
        y = conv(x, ctx)
        att = torch.softmax(conv.residuals(ctx), dim=-1)
        kernels = conv.weight.view(4, c_out, c_in // groups, kernel, kernel)
        assert att.std() > 0.05  # the examples really get different kernels
        for i in range(3):
            k_i = (att[i].view(4, 1, 1, 1, 1) * kernels).sum(0)
            ref = torch.nn.functional.conv2d(x[i:i + 1], k_i, None, stride, (kernel - 1) // 2, 1, groups)
            torch.testing.assert_close(y[i:i + 1], ref, rtol=1e-4, atol=1e-5)


def test_dynamic_relu_is_a_relu_at_zero_logits_and_a_max_of_two_lines_otherwise():
    act = DynamicReLU(6, 5)
    x = torch.randn(2, 6, 4, 3)
    torch.nn.init.zeros_(act.coef_net[0].weight)
    torch.nn.init.zeros_(act.coef_net[0].bias)
    torch.testing.assert_close(act(x, torch.randn(2, 5)), torch.relu(x))
    torch.nn.init.normal_(act.coef_net[0].bias)
    theta = 2 * torch.sigmoid(act.coef_net[0].bias.view(6, 4)) - 1
    a1, a2, b1, b2 = 1 + theta[:, 0], theta[:, 1], 0.5 * theta[:, 2], 0.5 * theta[:, 3]
    ref = torch.maximum(x * a1.view(6, 1, 1) + b1.view(6, 1, 1), x * a2.view(6, 1, 1) + b2.view(6, 1, 1))
    torch.testing.assert_close(act(x, torch.zeros(2, 5)), ref)


# ------------------------------------------------------------------------------------------ the backbone
def test_dymn04_loads_the_official_format_and_is_batch_invariant(dymn04, mirror, shared_data):
    assert dymn04.weights_path == mirror / "efficientat" / "dymn04_as.pt" and dymn04.embedding_dim == 384
    speech = _clip(shared_data, "speech001.wav")
    waves = [speech, speech[:16000], _clip(shared_data, "knock001.wav"), speech[:48000], speech[5000:53000]]
    # the input matters: clips differ by far more than the tolerance of the batch check
    together = check_audioset_tagger(dymn04, waves, 384, min_clip_difference=0.05)
    # the backbone's trunk is the network's own forward; the clip embedding is upstream's pooled last feature map
    with torch.inference_mode():
        logits, emb = dymn04.model(dymn04.front_end(torch.from_numpy(speech[None])).unsqueeze(1))
    np.testing.assert_allclose(together.embeddings[0], emb[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(together.scores[0], torch.sigmoid(logits[0]).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(together.frames[0].mean(0), together.embeddings[0], rtol=1e-4, atol=1e-5)


def test_a_file_of_another_architecture_is_a_weights_error_naming_it(mirror, shared_models, tmp_path):
    state = torch.load(mirror / "efficientat" / "dymn04_as.pt", map_location="cpu", weights_only=True)
    state.pop("layers.3.depth_act.lambdas")
    torch.save(state, tmp_path / "truncated.pt")
    with pytest.raises(WeightsError, match=r"truncated\.pt: does not match the EfficientAT dymn \(width 0.4\)"):
        load_backbone("efficientat-dymn04", weights=tmp_path / "truncated.pt", device="cpu")
    # an mn04 checkpoint (the static network of the same width) is not a dymn04 one
    mn04 = require(shared_models / "efficientat" / "mn04_as_mAP_432.pt")
    with pytest.raises(WeightsError, match=r"mn04_as_mAP_432\.pt: does not match the EfficientAT dymn"):
        load_backbone("efficientat-dymn04", weights=mn04, device="cpu")
    # nor is a dymn04 file a dymn10 one
    with pytest.raises(WeightsError, match=r"dymn04_as\.pt: does not match the EfficientAT dymn \(width 1.0\)"):
        load_backbone("efficientat-dymn10", weights=mirror / "efficientat" / "dymn04_as.pt", device="cpu")
