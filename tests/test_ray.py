"""`extract --engine ray`: the same store as the local engine, on a local Ray instance, on a two-node cluster on
loopback, and through a worker killed mid-job; clear errors when Ray is missing or unreachable.

Real clips (dcase office sounds, donateacry cries, the longest sonicpi samples), YAMNet-Lite, 1 s windows so that
clips have several windows and the longer ones take the streamed decoding path.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import IN_CI, run_cli
from embedtag.embeddings.pipeline import extract
from embedtag.errors import ParamError

try:
    import ray  # noqa: F401
    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False
#: the ray extra is in `dev`, so CI has it: there a missing Ray fails these tests instead of skipping them
needs_ray = pytest.mark.skipif(not HAVE_RAY and not IN_CI, reason="needs the ray extra: pip install 'embedtag[ray]'")

MODEL = "yamnet-lite"
WINDOW_S = 1.0


@pytest.fixture(scope="module")
def clips(shared_data, tmp_path_factory) -> Path:
    """40 real clips (1 to 11 windows each) and one file that is not audio, in one folder."""
    import soundfile as sf

    d = tmp_path_factory.mktemp("ray_clips")
    picks = sorted((shared_data / "dcase2016_task2_office" / "audio").iterdir())[:30]
    picks += sorted((shared_data / "donateacry_cleaned" / "audio").iterdir())[:8]
    sonic = sorted((shared_data / "sonicpi_samples" / "audio").iterdir(), key=lambda f: -sf.info(f).duration)
    picks += sonic[:2]
    for f in picks:
        (d / f.name).symlink_to(f)
    (d / "broken.wav").write_text("this is not audio\n")
    return d


@pytest.fixture(scope="module")
def local_store(clips, tmp_path_factory):

    from embedtag.store import open_store

    out = tmp_path_factory.mktemp("ray_local") / "store"
    extract(clips, out, model=MODEL, window_s=WINDOW_S, progress=False)
    return open_store(out)


def assert_same_store(store, reference) -> None:
    """Same clip set, each clip once, embeddings and scores within 1e-5, same metadata and failures."""
    ids, ref_ids = store.clip_ids, reference.clip_ids
    assert len(ids) == len(set(ids)), "a clip was stored twice"
    assert set(ids) == set(ref_ids)
    emb = dict(zip(ids, store.embeddings()))
    ref = dict(zip(ref_ids, reference.embeddings()))
    assert max(np.abs(emb[k] - ref[k]).max() for k in ref_ids) <= 1e-5
    sc, ref_sc = dict(zip(ids, store.scores())), dict(zip(ref_ids, reference.scores()))
    assert max(np.abs(sc[k] - ref_sc[k]).max() for k in ref_ids) <= 1e-5
    cols = ["clip_id", "duration_s", "sample_rate", "channels", "n_windows", "peak", "rms_dbfs"]
    a = store.to_pandas(cols).sort_values("clip_id").reset_index(drop=True)
    b = reference.to_pandas(cols).sort_values("clip_id").reset_index(drop=True)
    assert a.equals(b)
    assert b["n_windows"].max() > 6  # the streamed path (clips longer than STREAM_THRESHOLD_WINDOWS) was taken
    err, ref_err = store.errors(), reference.errors()
    assert sorted(zip(err.clip_id, err.reason)) == sorted(zip(ref_err.clip_id, ref_err.reason))


def _short_tmp(tag: str) -> str:
    # Ray's socket paths live under its temp dir and must stay under the 107-byte limit of a Unix socket path
    return tempfile.mkdtemp(prefix=f"et-{tag}-", dir="/tmp")


def _map_workers() -> list[int]:
    """pids of Ray Data actor processes below this process (the local instance's raylet is our child)."""
    found, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for c in map(int, children):
            todo.append(c)
            try:
                title = Path(f"/proc/{c}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "MapWorker" in title and "EmbedActor" in title:
                found.append(c)
    return found


@needs_ray
@pytest.mark.slow
class TestLocalRay:
    """A local Ray instance with 2 CPUs, started in this process."""

    @pytest.fixture(scope="class", autouse=True)
    def local_ray(self):
        import ray

        tmp = _short_tmp("ray")
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 << 20,
                 log_to_driver=False, _temp_dir=tmp)
        yield
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    def test_same_store_as_local_engine_bad_file_recorded_rerun_adds_nothing(self, clips, local_store, tmp_path):

        from embedtag.store import open_store

        out = tmp_path / "store"
        summary = extract(clips, out, model=MODEL, window_s=WINDOW_S, progress=False, engine="ray", actors=1)
        assert summary.n_stored == 40 and summary.n_failed == 1
        assert summary.failures[0][0] == "broken.wav" and "cannot decode" in summary.failures[0][1]
        assert summary.ray.decoded_in_actor == 0  # decoding ran as tasks, not fused into the model actors
        assert sum(summary.ray.embed_nodes.values()) >= sum(open_store(out).to_pandas(["n_windows"]).n_windows)
        assert_same_store(open_store(out), local_store)

        shards = sorted(p.name for p in (out / "shards").iterdir())
        again = extract(clips, out, model=MODEL, window_s=WINDOW_S, progress=False, engine="ray", actors=1)
        assert again.n_stored == 0
        assert sorted(p.name for p in (out / "shards").iterdir()) == shards
        assert sorted(open_store(out).clip_ids) == sorted(local_store.clip_ids)

    def test_gpu_actors_on_a_cluster_without_gpus_are_refused(self, clips, tmp_path):
        """--gpus-per-actor asks Ray for GPUs; a pool the cluster cannot hold is refused instead of waiting forever."""

        from embedtag.errors import ParamError

        with pytest.raises(ParamError, match=r"1 actors x 1 GPUs need 1 GPUs; the cluster has 0"):
            extract(clips, tmp_path / "s", model=MODEL, progress=False, engine="ray", gpus_per_actor=1)
        with pytest.raises(ParamError, match=r"3 actors .* need 4 CPUs; the cluster has 2"):
            extract(clips, tmp_path / "s", model=MODEL, progress=False, engine="ray", actors=3)

    def test_actor_killed_mid_job_every_clip_exactly_once(self, clips):
        """SIGKILL the process running the embedding actor as soon as the first clips come back: Ray restarts it
        and retries its batches; the driver still closes every clip exactly once. (Quarter-second windows, one per
        model call, so that most of the work is still ahead of the actor when the first clips arrive.)"""
        from embedtag.embeddings.pipeline import _load, collect_sources, run
        from embedtag.embeddings.ray_engine import run_ray

        window_s = 0.25
        backbone = _load(MODEL, None, "cpu")
        sources = collect_sources(clips)
        ref = {}
        run(backbone, sources, on_batch=lambda recs: ref.update({r["clip_id"]: r["embedding"] for r in recs}),
            on_error=lambda s, e: None, window_s=window_s)
        records, errors, killed = [], [], []

        def on_batch(recs):
            if not killed:
                pids = _map_workers()
                assert pids, "no embedding actor process found"
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed.extend(pids)
            records.extend(recs)

        stats = run_ray(backbone, sources, on_batch=on_batch, on_error=lambda s, e: errors.append(s.clip_id),
                        batch_size=1, window_s=window_s, actors=1)
        ids = [r["clip_id"] for r in records]
        assert len(ids) == len(set(ids)) == 40 and errors == ["broken.wav"]
        pids = {pid for _, pid in stats.embed_actors}
        assert set(killed) <= pids and pids - set(killed), f"the kill was not mid-job: {stats.embed_actors}"
        assert max(np.abs(r["embedding"] - ref[r["clip_id"]]).max() for r in records) <= 1e-5


@needs_ray
@pytest.mark.slow
def test_two_node_cluster_on_loopback(clips, local_store, tmp_path):
    """`ray start --head` + `ray start --address` on 127.0.0.1 (own ports and temp dirs, stopped after), then
    `embedtag extract --engine ray --ray-address HOST:PORT` in a fresh process, as a user runs it: the job runs on
    both nodes and writes the same store. (Two windows per model call: enough calls that the actor which starts
    second still gets work.)"""
    import subprocess

    from embedtag.embeddings.ray_engine import loopback_cluster
    from embedtag.store import open_store

    out = tmp_path / "store"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", COLUMNS="250")
    with loopback_cluster(n_nodes=2, cpus_per_node=2) as address:
        done = subprocess.run(
            [sys.executable, "-c", "from embedtag.cli import main; main()", "extract", str(clips), "--out", str(out),
             "-m", MODEL, "--window-s", str(WINDOW_S), "--engine", "ray", "--ray-address", address, "--actors", "2",
             "--batch-size", "2", "-q"], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 3, done.stdout + done.stderr  # 3: finished, with broken.wav recorded as failed
    assert "2 node(s), 2 actor(s) on CPU; decoded on 2 node(s), embedded on 2 node(s) by 2 actor process(es)" \
        in done.stdout, done.stdout
    assert "broken.wav" in done.stdout
    assert_same_store(open_store(out), local_store)


def test_ray_missing_is_one_clear_line(clips, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    code, out, err = run_cli(capsys, "extract", clips, "--out", tmp_path / "s", "-m", MODEL, "--engine", "ray",
                             "-q")
    assert code == 1
    assert "pip install 'embedtag[ray]'" in err and "Traceback" not in err + out
    assert not (tmp_path / "s").exists()  # refused before a model was loaded or a store created


@needs_ray
def test_unreachable_cluster_and_misplaced_options_are_refused(clips, tmp_path, capsys):
    from embedtag.embeddings.ray_engine import free_port

    code, _, err = run_cli(capsys, "extract", clips, "--out", tmp_path / "s", "-m", MODEL, "--engine", "ray",
                             "--ray-address", f"127.0.0.1:{free_port()}", "-q")
    assert code == 1 and "cannot reach the Ray cluster at 127.0.0.1:" in err and "ray start --head" in err
    code, _, err = run_cli(capsys, "extract", clips, "--out", tmp_path / "s", "-m", MODEL, "--actors", "2", "-q")
    assert code == 1 and "actors only apply to engine='ray'" in err
    code, _, err = run_cli(capsys, "extract", clips, "--out", tmp_path / "s", "-m", MODEL, "--engine", "spark")
    assert code == 2 and "'spark'" in err and "'local'" in err  # a usage error that lists the choices
    with pytest.raises(ParamError, match="unknown engine 'spark'"):
        extract(clips, tmp_path / "s", model=MODEL, engine="spark")
    assert not (tmp_path / "s").exists()
