"""`make demo`'s driver: a clear message without data, the whole job on real audio with it."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import DATA, REPO, require


def _demo(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "embedtag.demo", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_bare_demo_without_shared_says_what_to_do(tmp_path):
    r = _demo("--shared", str(tmp_path / "no_shared_here"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "make demo DATA=" in r.stdout and "weights" in r.stdout


def test_demo_on_a_real_dataset_runs_end_to_end(tmp_path, shared_models):
    data = require(DATA / "goldlab_oddball_novel_sounds")
    r = _demo("--data", str(data), "--out", str(tmp_path / "o"))  # the default backbone, as `make demo` runs it
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "79 clips" in r.stdout and "efficientat-mn04" in r.stdout
    assert "5-fold lwlrap" in r.stdout and "nearest neighbours" in r.stdout
    assert (tmp_path / "o" / "head" / "config.json").is_file()
