"""`extract` end to end on real audio: bad inputs, resume after a crash, CSV inputs, store compatibility."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from conftest import DATA, REPO, require
from embedtag.embeddings.pipeline import collect_sources, encode, extract
from embedtag.errors import AudioError, DataError, IncompatibleError
from embedtag.store import open_store

OFFICE = DATA / "dcase2016_task2_office"


@pytest.fixture()
def messy_dir(tmp_path):
    """Real clips plus every kind of trouble a user's folder holds."""
    src = require(OFFICE / "audio")
    d = tmp_path / "messy"
    (d / "sub").mkdir(parents=True)
    for f in sorted(src.glob("speech*.wav"))[:2] + sorted(src.glob("knock*.wav"))[:2]:
        shutil.copy(f, d / "sub" / f.name)
    speech, sr = sf.read(sorted(src.glob("speech*.wav"))[0], dtype="float32")
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 20)
    (d / "empty.flac").write_bytes(b"")
    sf.write(d / "tiny_0.1s.wav", speech[: int(0.1 * sr)], sr)
    rng = np.random.default_rng(0)
    sf.write(d / "long_5min.flac", (0.05 * rng.standard_normal(16000 * 300)).astype(np.float32), 16000)
    st = np.stack([np.interp(np.arange(int(speech.size * 48000 / sr)) * sr / 48000, np.arange(speech.size),
                             speech)] * 2, axis=1)
    sf.write(d / "stereo_48k.wav", st.astype(np.float32), 48000, subtype="PCM_24")
    (d / "notes.txt").write_text("not audio")
    return d


def test_bad_inputs_are_recorded_and_a_rerun_retries_only_them(messy_dir, tmp_path, shared_models):
    out = tmp_path / "store"
    summary = extract(messy_dir, out, model="yamnet-lite", batch_size=8, progress=False)
    store = open_store(out)
    stored = set(store.clip_ids)
    assert stored == {"sub/" + f.name for f in (messy_dir / "sub").iterdir()} | {
        "tiny_0.1s.wav", "long_5min.flac", "stereo_48k.wav"}
    errors = store.errors().set_index("clip_id")["reason"].to_dict()
    assert set(errors) == {"corrupt.wav", "empty.flac", "notes.txt"}
    assert "empty file" in errors["empty.flac"] and "cannot decode" in errors["corrupt.wav"]
    assert "unsupported file type" in errors["notes.txt"]
    assert summary.n_stored == 7 and summary.n_failed == 3
    df = store.to_pandas().set_index("clip_id")
    assert df.loc["long_5min.flac", "n_windows"] == 30 and abs(df.loc["long_5min.flac", "duration_s"] - 300) < 1e-6
    assert df.loc["stereo_48k.wav", "channels"] == 2 and df.loc["stereo_48k.wav", "sample_rate"] == 48000
    # the 48 kHz stereo copy of a speech clip embeds like the original (resampling and downmix are right)
    e = store.embeddings()
    ids = store.clip_ids
    orig = sorted(f.name for f in (messy_dir / "sub").glob("speech*"))[0]
    a, b = e[ids.index("stereo_48k.wav")], e[ids.index("sub/" + orig)]
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.98

    # a rerun skips the stored clips and tries the failed ones again; they fail again and stay recorded once
    again = extract(messy_dir, out, model="yamnet-lite", progress=False)
    assert again.n_stored == 0 and again.n_failed == 3 and again.n_skipped == 7 and again.n_retried == 3
    assert again.n_unstored == 3
    assert len(open_store(out)) == 7 and len(open_store(out).errors()) == 3
    assert len(open_store(out).errors(history=True)) == 6


def test_strict_stops_at_first_bad_file(messy_dir, tmp_path, shared_models):
    with pytest.raises(AudioError):
        extract(messy_dir, tmp_path / "s", model="yamnet-lite", strict=True, progress=False)


def test_embedding_does_not_depend_on_batch(tmp_path, shared_models):
    src = require(OFFICE)
    a = extract(src, tmp_path / "a", model="yamnet-lite", batch_size=1, limit=24, progress=False)
    b = extract(src, tmp_path / "b", model="yamnet-lite", batch_size=16, limit=24, progress=False)
    assert a.n_stored == b.n_stored == 24
    sa, sb = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    ea = dict(zip(sa.clip_ids, sa.embeddings()))
    eb = dict(zip(sb.clip_ids, sb.embeddings()))
    for k in ea:
        np.testing.assert_allclose(ea[k], eb[k], atol=1e-4)


def test_a_job_runs_inside_the_backbones_cpu_job_also_when_it_fails(tmp_path):
    """The pipeline enters the backbone's cpu_job once around the whole job (every model call inside it) and
    leaves it after, also when a strict job stops at a bad file."""
    import contextlib

    from embedtag.embeddings.backbones.base import Backbone, BackboneOutput
    from embedtag.errors import AudioError

    class Rms(Backbone):  # a tiny deterministic "model": the clip's RMS and peak
        name, family, sample_rate, embedding_dim, min_samples, class_names = "rms", "rms", 16000, 2, 1, []
        events: list[str] = []

        @contextlib.contextmanager
        def cpu_job(self):
            self.events.append("enter")
            try:
                yield
            finally:
                self.events.append("exit")

        def embed(self, waves, *, return_frames=False):
            self.events.append("embed")
            return BackboneOutput(np.array([[np.sqrt(np.mean(w ** 2)), np.abs(w).max()] for w in waves],
                                           np.float32))

    rng = np.random.default_rng(0)
    src = tmp_path / "clips"
    src.mkdir()
    for i in range(12):
        sf.write(src / f"c{i:02d}.wav", 0.1 * rng.standard_normal(1600 * (i + 1)), 16000)
    bb = Rms()
    s = extract(src, tmp_path / "a", model=bb, batch_size=2, progress=False)
    assert s.n_stored == 12
    assert bb.events[0] == "enter" and bb.events[-1] == "exit" and bb.events.count("embed") >= 6
    assert bb.events.count("enter") == 1 and bb.events.count("exit") == 1
    (src / "c05.wav").write_bytes(b"not audio")
    bb.events.clear()
    with pytest.raises(AudioError):
        extract(src, tmp_path / "b", model=bb, batch_size=2, strict=True, progress=False)
    assert bb.events[0] == "enter" and bb.events[-1] == "exit"


def test_decoding_starts_while_the_model_loads_and_gives_the_same_store(tmp_path, shared_models, monkeypatch):
    """A model given by name is loaded while the decoding threads already work on the first clips (a new store);
    the store is the same as with a model loaded beforehand (no early decoding)."""
    import threading

    from embedtag.embeddings import pipeline
    from embedtag.embeddings.registry import load_backbone

    src = require(OFFICE)
    decoded_in: list[str] = []
    real_decode, real_load = pipeline._decode, pipeline._load
    monkeypatch.setattr(pipeline, "_decode", lambda *a: decoded_in.append(threading.current_thread().name) or
                        real_decode(*a))
    during_load = []

    def load(*a):
        deadline = time.monotonic() + 10
        while not decoded_in and time.monotonic() < deadline:
            time.sleep(0.01)
        during_load.append(len(decoded_in))
        return real_load(*a)

    monkeypatch.setattr(pipeline, "_load", load)
    early = extract(src, tmp_path / "early", model="yamnet-lite", limit=20, progress=False)
    assert during_load[0] > 0 and all(n.startswith("embedtag-decode") for n in decoded_in)
    assert len(decoded_in) == 20  # each clip decoded once
    monkeypatch.setattr(pipeline, "_load", real_load)
    plain = extract(src, tmp_path / "plain", model=load_backbone("yamnet-lite"), limit=20, progress=False)
    assert early.n_stored == plain.n_stored == 20
    a, b = open_store(tmp_path / "early"), open_store(tmp_path / "plain")
    assert a.clip_ids == b.clip_ids
    np.testing.assert_allclose(a.embeddings(), b.embeddings(), atol=1e-6)
    # into an existing store nothing is decoded before the model is loaded (which clips are left comes first)
    during_load.clear()
    monkeypatch.setattr(pipeline, "_load", lambda *a: during_load.append(len(decoded_in)) or real_load(*a))
    decoded_in.clear()
    extract(src, tmp_path / "early", model="yamnet-lite", limit=24, progress=False)
    assert during_load == [0] and len(decoded_in) == 4


def test_run_passes_over_clips_of_an_earlier_decoding_it_was_not_given(tmp_path):
    """A decoding started on more clips than the job has left (another writer stored some meanwhile) embeds only
    the job's clips; one started at another sample rate is refused."""
    from embedtag.embeddings import pipeline
    from embedtag.embeddings.backbones.base import Backbone, BackboneOutput
    from embedtag.errors import ParamError
    from embedtag.inputs import ClipSource

    class Rms(Backbone):
        name, family, sample_rate, embedding_dim, min_samples, class_names = "rms", "rms", 16000, 1, 1, []

        def embed(self, waves, *, return_frames=False):
            return BackboneOutput(np.array([[np.sqrt(np.mean(w ** 2))] for w in waves], np.float32))

    rng = np.random.default_rng(0)
    sources = []
    for i in range(10):
        sf.write(tmp_path / f"c{i}.wav", (0.01 * (i + 1) * rng.standard_normal(1600)).astype(np.float32), 16000)
        sources.append(ClipSource(f"c{i}.wav", str(tmp_path / f"c{i}.wav")))
    got = []
    decoding = pipeline.Decoding(sources, 16000, workers=1, ahead=4, window_s=10.0, max_duration_s=None)
    pipeline.run(Rms(), sources[::3], on_batch=lambda recs: got.extend(r["clip_id"] for r in recs),
                 on_error=lambda s, e: None, max_duration_s=None, decoding=decoding)
    assert got == ["c0.wav", "c3.wav", "c6.wav", "c9.wav"] and not decoding.queued
    decoding = pipeline.Decoding(sources, 32000, workers=1, ahead=4, window_s=10.0, max_duration_s=None)
    with pytest.raises(ParamError, match="32000 Hz"):
        pipeline.run(Rms(), sources, on_batch=lambda recs: None, on_error=lambda s, e: None, max_duration_s=None,
                     decoding=decoding)
    assert not decoding.queued


def test_crash_mid_run_then_resume_stores_every_clip_once(tmp_path, shared_models, monkeypatch):
    from embedtag import store as store_mod

    src = require(OFFICE)
    real_append = store_mod.EmbeddingStore.append
    calls = {"n": 0}

    def crashing_append(self, rows):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third batch is being written
        return real_append(self, rows)

    monkeypatch.setattr(store_mod.EmbeddingStore, "append", crashing_append)
    with pytest.raises(KeyboardInterrupt):
        extract(src, tmp_path / "s", model="yamnet-lite", batch_size=8, limit=60, progress=False)
    partial = open_store(tmp_path / "s")
    assert 0 < len(partial) < 60
    monkeypatch.setattr(store_mod.EmbeddingStore, "append", real_append)
    extract(src, tmp_path / "s", model="yamnet-lite", batch_size=8, limit=60, progress=False)
    ids = open_store(tmp_path / "s").clip_ids
    assert len(ids) == 60 and len(set(ids)) == 60


def test_killed_process_then_rerun_stores_every_clip_once(tmp_path, shared_models):
    src = require(OFFICE)
    out = tmp_path / "s"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "embedtag", "extract", str(src), "--out", str(out), "--model", "yamnet-lite",
           "--batch-size", "2", "--workers", "1", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "shards").glob("part-*.parquet"))) >= 3 if (out / "shards").exists() else False:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = len(open_store(out))
    assert n_before < 220, "the run finished before it could be killed; the test proves nothing"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    ids = open_store(out).clip_ids
    assert len(ids) == 220 and len(set(ids)) == 220


def test_csv_input_keeps_fname_as_clip_id_and_labels(tmp_path, shared_models):
    src = require(OFFICE)
    csv = tmp_path / "train.csv"
    labels = pd.read_csv(src / "labels.csv").head(12)
    labels.to_csv(csv, index=False)
    with pytest.raises(DataError, match="12 of 12 listed audio files do not exist"):
        collect_sources(csv)  # the audio is not beside the CSV yet: one error, before any work
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    for f in labels.fname:
        os.symlink(src / "audio" / f, audio_dir / f)
    sources = collect_sources(csv)
    assert sources[0].clip_id == labels.fname[0] and sources[0].path == str(audio_dir / labels.fname[0])
    extract(csv, tmp_path / "s", model="yamnet-lite", progress=False)
    store = open_store(tmp_path / "s")
    assert store.clip_ids == labels.fname.tolist()
    assert [lab[0] for lab in store.labels()] == labels["labels"].tolist()


def test_appending_with_another_configuration_is_refused(tmp_path, shared_models):
    src = require(OFFICE)
    extract(src, tmp_path / "s", model="yamnet-lite", limit=4, progress=False)
    with pytest.raises(IncompatibleError, match="pooling"):
        extract(src, tmp_path / "s", model="yamnet-lite", pooling="max", limit=8, progress=False)
    with pytest.raises(IncompatibleError, match="backbone"):
        extract(src, tmp_path / "s", model="yamnet", limit=8, progress=False)


def test_encode_matches_store_and_meanmax_doubles_dim(tmp_path, shared_models):
    src = require(OFFICE)
    files = sorted((src / "audio").glob("laughter*.wav"))[:3]
    emb = encode(files, model="yamnet-lite")
    assert emb.shape == (3, 1024)
    e2 = encode(files, model="yamnet-lite", pooling="meanmax")
    assert e2.shape == (3, 2048)
    np.testing.assert_allclose(e2[:, :1024], emb, atol=1e-5)
    x, _ = sf.read(files[0], dtype="float32")
    np.testing.assert_allclose(encode(x, model="yamnet-lite", sample_rate=44100)[0], emb[0], atol=1e-4)


def test_cli_extract_exit_codes_and_summary(messy_dir, tmp_path, shared_models):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "embedtag", "extract", str(messy_dir), "--out", str(tmp_path / "s"),
                        "--model", "yamnet-lite", "-q"], env=env, capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "clips stored" in r.stdout and "notes.txt" in r.stdout
    r = subprocess.run([sys.executable, "-m", "embedtag", "info", str(tmp_path / "s"), "--errors"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "yamnet-lite" in r.stdout and "7 (4 labelled)" not in r.stdout
    assert "failed files" in r.stdout and "empty file" in r.stdout
    r = subprocess.run([sys.executable, "-m", "embedtag", "extract", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "t"), "-q"], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "input not found" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "embedtag", "extract"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "Missing argument" in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_extract_process_imports_only_what_its_backbone_needs(messy_dir, tmp_path, shared_models):
    """A fresh `embedtag extract` process with the TFLite backbone never imports pandas, torch, TensorFlow,
    scikit-learn or pyarrow.compute (0.1-5 s each before the first clip), nor with -q rich or pydantic, nor the
    other commands' modules, on every store path: a new store, failed files recorded, a rerun that retries them,
    labels attached on a rerun and read back on the next."""
    labels = tmp_path / "labels.csv"
    subs = sorted(f.name for f in (messy_dir / "sub").iterdir())
    labels.write_text("fname,labels\n" + "".join(f"sub/{n},{n.rstrip('0123456789.wav')}\n" for n in subs))
    code = ("import sys\nfrom embedtag.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code\nheavy = ('pandas', 'torch', 'tensorflow', 'sklearn', 'pyarrow.compute', 'rich', "
            "'pydantic', 'embedtag.cli.heads', 'embedtag.cli.search')\n"
            "print('LOADED', [m for m in heavy if m in sys.modules], file=sys.stderr)\nsys.exit(rc)")
    out = tmp_path / "s"
    for extra in ([], ["--labels", str(labels)], ["--labels", str(labels)]):
        r = subprocess.run([sys.executable, "-c", code, "extract", str(messy_dir), "--out", str(out), "-m",
                            "yamnet-lite", "-q", *extra], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert r.returncode == 3 and "LOADED []" in r.stderr, r.stderr[-800:]
        # -q prints the summary as plain lines, failures included
        assert "  clips stored: " in r.stdout and "  failed corrupt.wav: " in r.stdout, r.stdout
    store = open_store(out)
    assert len(store) == 7 and set(store.failed_ids()) == {"corrupt.wav", "empty.flac", "notes.txt"}
    got = dict(zip(store.clip_ids, store.labels()))
    assert {k: v for k, v in got.items() if k.startswith("sub/")} == {
        f"sub/{n}": [n.rstrip("0123456789.wav")] for n in subs}
    assert got["tiny_0.1s.wav"] is None
