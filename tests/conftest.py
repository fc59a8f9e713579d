"""Shared test fixtures: the real assets in ../shared, and embedding stores built from real audio.

Tests that need ../shared skip with a reason on a user's machine, but fail under CI (CI=true), where the
assets must be present.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EMBEDTAG_SHARED", REPO.parent / "shared")).resolve()
MODELS = SHARED / "models"
DATA = SHARED / "data"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(path: Path) -> Path:
    """Return ``path`` if it exists; else skip (user's machine) or fail (CI)."""
    if path.exists():
        return path
    msg = f"needs the real asset {path} (the shared/ folder beside the checkout; set EMBEDTAG_SHARED to move it)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Point the weights mirror at ../shared/models and keep the cache out of the user's home."""
    old = {k: os.environ.get(k) for k in ("EMBEDTAG_WEIGHTS_DIR", "EMBEDTAG_HOME", "EMBEDTAG_OFFLINE")}
    if MODELS.exists():
        os.environ["EMBEDTAG_WEIGHTS_DIR"] = str(MODELS)
    os.environ["EMBEDTAG_HOME"] = str(tmp_path_factory.mktemp("embedtag_home"))
    os.environ["EMBEDTAG_OFFLINE"] = "1"  # tests never reach for the network
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def shared_models() -> Path:
    return require(MODELS)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require(DATA)


_STORES: dict = {}


@pytest.fixture(scope="session")
def real_store(tmp_path_factory):
    """Factory: ``real_store("dcase2016_task2_office", model="yamnet")`` -> EmbeddingStore of that real
    dataset (labels.csv + audio/), extracted once per test session and shared by every test that asks."""
    from embedtag.embeddings.pipeline import extract
    from embedtag.store import open_store

    def make(dataset: str, model: str = "yamnet"):
        key = (dataset, model)
        if key not in _STORES:
            src = require(DATA / dataset)
            out = tmp_path_factory.mktemp(f"store_{dataset}_{model}")
            extract(src, out / "store", model=model, progress=False)
            _STORES[key] = out / "store"
        return open_store(_STORES[key])

    return make


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``embedtag ARGV...`` in-process through the real entry point: (exit code, stdout, stderr)."""
    from embedtag.cli import main

    try:
        main(list(map(str, argv)))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def one_torch_thread():
    """One torch thread for the test: OpenMP threads crawl on a busy 2-core CPU, and results do not depend on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_audioset_tagger(bb, waves, dim: int, min_clip_difference: float):
    """A 527-class AudioSet tagger on real clips: output shapes and ranges, each clip's embedding and scores in a
    batch equal to the clip alone, and different clips differing by ``min_clip_difference`` (the model reads its
    input). Returns the batch's output (with frames)."""
    import numpy as np

    together = bb.embed(waves, return_frames=True)
    assert together.embeddings.shape == (len(waves), dim) and together.embeddings.dtype == np.float32
    assert together.scores.shape == (len(waves), 527) and np.all((together.scores >= 0) & (together.scores <= 1))
    assert together.frames[0].shape[1] == dim and together.frames[0].shape[0] >= 2
    assert np.isfinite(together.embeddings).all()
    for i, w in enumerate(waves):
        alone = bb.embed([w])
        np.testing.assert_allclose(together.embeddings[i], alone.embeddings[0], atol=1e-4)
        np.testing.assert_allclose(together.scores[i], alone.scores[0], atol=1e-4)
    assert np.abs(together.embeddings[0] - together.embeddings[2]).max() > min_clip_difference
    return together
