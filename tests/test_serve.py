"""`embedtag serve` and the window-level core (embedtag.frames) on real weights and real clips.

One EfficientAT store of the real DCASE office clips (the conftest fixture, shared with other tests), a head
trained here on all but a few held-out clips, and a similarity index of the store."""

from __future__ import annotations

import asyncio
import csv
import json
import re
import shutil

import numpy as np
import pytest

from conftest import DATA, IN_CI, run_cli

if not IN_CI:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")

MODEL = "efficientat-mn04"
OFFICE = "dcase2016_task2_office"
#: clips left out of the head's training, with their true label
HELD_OUT = {"laughter005.wav": "laughter", "speech001.wav": "speech", "keyboard005.wav": "keyboard",
            "doorslam001.wav": "doorslam", "phone036.wav": "phone"}

pytestmark = pytest.mark.slow  # the first test extracts the office store (~1-2 min on 2 busy cores)


def audio(name: str):
    return DATA / OFFICE / "audio" / name


def make_artifacts(store, out):
    """A logistic-regression head trained on the office store minus HELD_OUT, and a flat index of the store."""
    from embedtag.heads import fit_head
    from embedtag.search import build_index

    out.mkdir(parents=True, exist_ok=True)
    labels = out / "labels.csv"
    with open(DATA / OFFICE / "labels.csv", newline="", encoding="utf-8") as f, \
            open(labels, "w", newline="", encoding="utf-8") as g:
        w = csv.writer(g)
        for row in csv.reader(f):
            if row[0] not in HELD_OUT:
                w.writerow(row)
    head, _ = fit_head(store, labels=labels, head="logreg", progress=False)
    head.save(out / "head")
    build_index(store).save(out / "index")
    return out / "head", out / "index"


@pytest.fixture(scope="module")
def office(real_store):
    return real_store(OFFICE, model=MODEL)


@pytest.fixture(scope="module")
def artifacts(office, tmp_path_factory):
    return make_artifacts(office, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def backbone(shared_models):
    from embedtag.embeddings.registry import load_backbone

    return load_backbone(MODEL)


@pytest.fixture(scope="module")
def served(artifacts, backbone, tmp_path_factory):
    """A TestClient of an app serving the head and the index (uploads spooled in a folder the tests watch)."""
    from fastapi.testclient import TestClient

    from embedtag.serve import create_app

    head, index = artifacts
    uploads = tmp_path_factory.mktemp("uploads")
    app = create_app(head=head, index=index, model=backbone, upload_dir=uploads)
    with TestClient(app) as client:
        yield client, app, uploads


def post_file(client, path, route="/v1/tag", **kw):
    with open(path, "rb") as f:
        return client.post(route, files={"file": (path.name, f, "audio/wav")}, **kw)


# ------------------------------------------------------------------------------------------------ frames core
def test_iter_frames_covers_the_audio_with_overlapping_windows():
    from embedtag.errors import ParamError
    from embedtag.frames import iter_frames

    x = np.arange(25, dtype=np.float32)
    got = [(s, w.tolist()) for s, w in iter_frames(x, 10, 1.0, 0.5)]  # window 10 samples, hop 5
    assert [s for s, _ in got] == [0, 5, 10, 15]
    assert got[0][1] == list(range(10)) and got[-1][1] == list(range(15, 25))
    # a short tail already covered by the previous window is not a window of its own
    assert [s for s, _ in iter_frames(np.zeros(22, np.float32), 10, 1.0, 0.5)] == [0, 5, 10, 15]
    assert [w.size for _, w in iter_frames(np.zeros(7, np.float32), 10, 1.0)] == [7]  # shorter than a window
    with pytest.raises(ParamError):
        next(iter_frames(x, 10, 1.0, 2.0))


def test_frames_follow_the_segments_of_concatenated_clips(artifacts, backbone, tmp_path):
    """Held-out clips of three labels end to end: every window inside a segment gets that segment's label."""
    import soundfile as sf

    from embedtag.artifacts import load_predictor
    from embedtag.embeddings.audio import load_audio
    from embedtag.frames import predict_frames

    head = load_predictor(artifacts[0])
    names = ["laughter005.wav", "speech001.wav", "keyboard005.wav"]
    parts = [load_audio(audio(n), 32000)[0] for n in names]
    long = tmp_path / "long.flac"
    sf.write(long, np.concatenate(parts), 32000)
    df = predict_frames(head, long, window_s=1.0, hop_s=0.5, backbone=backbone)
    assert list(df.columns[:3]) == ["clip_id", "start_s", "end_s"] and list(df.columns[3:]) == head.vocabulary
    assert df["clip_id"].eq("long.flac").all() and df["start_s"].iloc[0] == 0
    assert df["end_s"].iloc[-1] == pytest.approx(sum(p.size for p in parts) / 32000, abs=1e-4)
    bounds = np.cumsum([0] + [p.size / 32000 for p in parts])
    right = wrong = 0
    for i, name in enumerate(names):
        inside = df[(df.start_s >= bounds[i]) & (df.end_s <= bounds[i + 1])]
        best = inside[head.vocabulary].astype(float).idxmax(axis=1)
        assert len(inside) >= 2 and best.value_counts().index[0] == HELD_OUT[name], (name, best.tolist())
        right += int((best == HELD_OUT[name]).sum())
        wrong += int((best != HELD_OUT[name]).sum())
    assert right >= 3 * wrong  # measured: 7 of 8 (laughter's first second sounds like a cough)


def test_backbone_frames_are_audioset_scores_per_window(backbone):
    from embedtag.frames import predict_frames, tag_clip

    df = predict_frames(backbone, [audio("speech001.wav"), audio("knock001.wav")], window_s=1.0, hop_s=0.5)
    assert len(df.columns) == 3 + 527 and "Speech" in df.columns
    speech = df[df.clip_id == "speech001.wav"]
    assert (speech.start_s.tolist() == [0.0, 0.5, 1.0]
            and speech.end_s.tolist() == pytest.approx([1.0, 1.5, 1.896], abs=1e-3))
    assert (speech.iloc[:, 3:].astype(float).idxmax(axis=1) == "Speech").all()
    assert df[df.clip_id == "knock001.wav"].start_s.tolist() == [0.0]  # 0.87 s: one window
    whole = tag_clip(backbone, audio("speech001.wav"), k=1)
    assert whole["tags"][0]["label"] == "Speech" and whole["labels"][0] == "Speech"


def test_tag_clip_of_a_head_is_predict_files(artifacts, backbone):
    from embedtag.artifacts import load_predictor
    from embedtag.frames import tag_clip
    from embedtag.heads import predict_files

    head = load_predictor(artifacts[0])
    path = audio("speech001.wav")
    got = tag_clip(head, path, k=3, backbone=backbone)
    want = predict_files(head, [path], progress=False).iloc[0, 1:].astype(float)
    assert got["tags"][0]["label"] == "speech" == want.idxmax() and got["labels"] == ["speech"]
    assert got["tags"][0]["score"] == pytest.approx(want.max(), abs=1e-5)
    assert got["duration_s"] == pytest.approx(1.896, abs=1e-3)


# ------------------------------------------------------------------------------------------------ API
def test_audioset_tags_of_a_real_speech_clip(backbone):
    from fastapi.testclient import TestClient

    from embedtag.serve import create_app

    with TestClient(create_app(model=backbone)) as client:
        r = post_file(client, audio("speech001.wav"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["tags"][0]["label"] == "Speech" and "Speech" in body["labels"]
        assert body["timeline"] is None and body["duration_s"] == pytest.approx(1.896, abs=1e-3)
        info = client.get("/v1/info").json()
        assert info["mode"] == "backbone" and len(info["labels"]) == 527 and info["index"] is None
        assert info["weights_sha256"] == backbone.weights_sha256


def test_a_head_tags_held_out_clips_with_their_true_label(served):
    client, _, _ = served
    for name, label in HELD_OUT.items():
        r = post_file(client, audio(name))
        assert r.status_code == 200, r.text
        assert r.json()["tags"][0]["label"] == label, (name, r.json()["tags"][:3])
    # a raw body works as well as multipart
    r = client.post("/v1/tag", content=audio("speech001.wav").read_bytes())
    assert r.json()["labels"] == ["speech"]
    info = client.get("/v1/info").json()
    assert info["mode"] == "head" and info["labels"] == sorted(set(HELD_OUT.values()) | {
        "clearthroat", "cough", "drawer", "keysDrop", "knock", "pageturn"})
    assert info["index"]["clips"] == 220 and info["index"]["playback"] is True


def test_timeline_for_audio_longer_than_one_window(served, tmp_path):
    import soundfile as sf

    from embedtag.embeddings.audio import load_audio

    client, _, _ = served
    x, sr = load_audio(audio("speech001.wav"))
    long = tmp_path / "long.wav"
    sf.write(long, np.tile(x, 12), sr)  # 22.8 s: three 10 s windows (the store's)
    body = post_file(client, long).json()
    tl = body["timeline"]
    assert tl["hop_s"] == 10.0 and len(tl["labels"]) == 11 and tl["labels"][0] == "speech"
    assert [len(s) for s in tl["scores"]] == [3] * 11
    assert body["tags"][0]["label"] == "speech"


def test_search_with_a_stored_clip_returns_it_first(served):
    client, _, _ = served
    r = post_file(client, audio("knock001.wav"), "/v1/search", params={"k": 5})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 5 and res[0]["clip_id"] == "knock001.wav" and res[0]["score"] > 0.999
    assert res[0]["labels"] == ["knock"] and [x["score"] for x in res] == sorted((x["score"] for x in res),
                                                                                reverse=True)
    by_id = client.post("/v1/search", params={"clip_id": "knock001.wav", "k": 3}).json()["results"]
    assert len(by_id) == 3 and "knock001.wav" not in [x["clip_id"] for x in by_id]
    assert by_id[0]["clip_id"] == res[1]["clip_id"]


def test_clip_audio_streams_the_stored_file(served):
    client, _, _ = served
    r = client.get("/v1/clips/phone036.wav/audio")
    assert r.status_code == 200 and r.content == audio("phone036.wav").read_bytes()
    assert r.headers["content-type"].startswith("audio/")
    for bad in ("nope.wav", "../labels.csv", "..%2F..%2Fetc%2Fpasswd", str(audio("phone036.wav"))):
        r = client.get(f"/v1/clips/{bad}/audio")
        assert r.status_code == 404 and r.json()["error"] in {"unknown_clip", "not_found"}, bad


def test_openapi_page_health_and_metrics(served):
    client, _, _ = served
    spec = client.get("/openapi.json").json()
    assert {"/v1/tag", "/v1/search", "/v1/clips/{clip_id}/audio", "/v1/info"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/tag"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js">' in page.text
    assert "cdn" not in page.text.lower() and client.get("/static/app.js").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    text = client.get("/metrics").text
    assert 'embedtag_requests_total{method="POST",route="/v1/tag",status="200"}' in text
    assert "embedtag_batch_windows_bucket" in text and "embedtag_request_duration_seconds_bucket" in text


def test_concurrent_requests_are_batched_and_give_the_sequential_results(served):
    import httpx

    client, app, uploads = served
    names = sorted(p.name for p in (DATA / OFFICE / "audio").glob("*.wav"))[::7][:32]
    assert len(names) == 32
    sequential = [post_file(client, audio(n)).json() for n in names]
    before = _metric(client, "embedtag_batch_requests_sum"), _metric(client, "embedtag_batch_requests_count")

    async def all_at_once():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c:
            async def one(n):
                return (await c.post("/v1/tag", files={"file": (n, audio(n).read_bytes(), "audio/wav")})).json()
            return await asyncio.gather(*(one(n) for n in names))

    concurrent = asyncio.run(all_at_once())
    for n, a, b in zip(names, sequential, concurrent):
        assert [t["label"] for t in a["tags"]] == [t["label"] for t in b["tags"]], n
        assert a["labels"] == b["labels"], n
        np.testing.assert_allclose([t["score"] for t in a["tags"]], [t["score"] for t in b["tags"]], atol=1e-5)
    jobs = _metric(client, "embedtag_batch_requests_sum") - before[0]
    calls = _metric(client, "embedtag_batch_requests_count") - before[1]
    assert jobs == 32 and calls < 32  # some model calls served several requests
    assert list(uploads.iterdir()) == []


def _metric(client, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", client.get("/metrics").text, re.MULTILINE)
    return float(m.group(1))


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def strict(backbone, artifacts, tmp_path_factory):
    """Small limits and a token: 200 kB uploads, 1.5 s of audio."""
    from fastapi.testclient import TestClient

    from embedtag.serve import create_app

    uploads = tmp_path_factory.mktemp("strict_uploads")
    app = create_app(index=artifacts[1], model=backbone, max_upload_mb=0.2, max_duration_s=1.5, token="s3cret",
                     upload_dir=uploads)
    with TestClient(app, headers={"Authorization": "Bearer s3cret"}) as client:
        yield client, app, uploads


def test_bad_inputs_answer_json_with_their_status(strict, tmp_path):
    client, _, uploads = strict
    ok = audio("phone036.wav")  # 0.8 s, 71 kB

    def check(r, status, error=None):
        assert r.status_code == status, r.text
        body = r.json()
        assert set(body) == {"error", "detail"} and body["detail"], body
        if error:
            assert body["error"] == error, body
        return body

    assert post_file(client, ok).status_code == 200
    check(post_file(client, audio("keyboard005.wav")), 413, "upload_too_large")  # 230 kB
    check(client.post("/v1/tag", content=audio("keyboard005.wav").read_bytes()), 413, "upload_too_large")
    body = check(post_file(client, audio("speech001.wav")), 413, "audio_too_long")  # 1.9 s, 167 kB
    assert "1.9 s" in body["detail"] and "1.5 s" in body["detail"]
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 20)
    body = check(post_file(client, text), 415, "not_audio")
    assert str(uploads) not in body["detail"] and "notes.wav" in body["detail"]  # never the server's paths
    check(client.post("/v1/tag", content=b""), 422, "empty_upload")
    check(client.post("/v1/tag", files={"other": ("x.wav", ok.read_bytes(), "audio/wav")}), 422, "missing_file")
    cut = ok.read_bytes()[:44]  # the WAV header alone
    r = client.post("/v1/tag", content=cut)
    assert r.status_code in (415, 422) and r.json()["error"] in {"not_audio", "empty_audio"}
    check(client.post("/v1/search", params={"clip_id": "nope.wav"}), 404, "unknown_clip")
    check(client.post("/v1/search", params={"clip_id": "knock001.wav", "k": 0}), 422, "invalid_request")
    check(client.get("/v1/nothing"), 404, "not_found")
    # the token
    check(client.get("/v1/info", headers={"Authorization": ""}), 401, "unauthorized")
    check(client.get("/v1/info", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
    check(client.get("/metrics", headers={"Authorization": ""}), 401, "unauthorized")
    assert client.get("/healthz", headers={"Authorization": ""}).status_code == 200
    assert client.get("/v1/info").json()["limits"]["auth"] is True
    assert list(uploads.iterdir()) == []


def test_an_oversized_upload_is_refused_while_it_streams(strict):
    """A body with no Content-Length, far over the limit: refused after about the limit, not read whole."""
    import httpx

    _, app, uploads = strict
    sent = [0]

    async def body():
        for _ in range(1000):  # 64 MB if it were all read
            sent[0] += 65536
            yield b"\0" * 65536

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve",
                                     headers={"Authorization": "Bearer s3cret"}) as c:
            return await c.post("/v1/tag", content=body())

    r = asyncio.run(go())
    assert r.status_code == 413 and r.json()["error"] == "upload_too_large"
    assert sent[0] < 1_000_000
    assert list(uploads.iterdir()) == []


def test_a_full_queue_answers_503_with_retry_after(backbone):
    import httpx

    from embedtag.serve import create_app

    app = create_app(model=backbone, max_queue=1)
    data = audio("phone036.wav").read_bytes()

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c:
            return await asyncio.gather(*(c.post("/v1/tag", content=data) for _ in range(6)))

    rs = asyncio.run(go())
    codes = sorted(r.status_code for r in rs)
    assert codes[0] == 200 and codes[-1] == 503, codes
    busy = next(r for r in rs if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"] == "overloaded"
    app.state.batcher.close()


def test_a_head_of_another_backbone_than_the_index_fails_at_start_up(artifacts, backbone, tmp_path, capsys):
    from embedtag.errors import IncompatibleError
    from embedtag.serve import create_app

    head, index = artifacts
    other = tmp_path / "head"
    shutil.copytree(head, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["backbone"] = "yamnet-lite"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IncompatibleError, match="yamnet-lite.*efficientat-mn04") as e:
        create_app(head=other, index=index, model=backbone)
    assert "\n" not in str(e.value)
    code, _, err = run_cli(capsys, "serve", "--head", other, "--index", index)
    assert code == 1 and err.strip().startswith("error:") and "yamnet-lite" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "serve", "--index", head)  # a head is no index
    assert code == 1 and "is a head, not a similarity index" in err


def test_a_public_host_needs_a_token(capsys):
    from embedtag.cli.serve import is_loopback

    code, _, err = run_cli(capsys, "serve", "--host", "0.0.0.0")
    assert code == 1 and "--token" in err and "--allow-unauthenticated" in err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")


def test_the_cli_serves_and_logs_one_line_per_request(shared_models, tmp_path):
    """`embedtag serve` in its own process: it answers on loopback and logs each request in one line."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from conftest import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "embedtag", "serve", "--model", MODEL, "--port", str(port),
                                 "--max-duration-s", "5"], stderr=err, stdout=subprocess.DEVNULL, env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "embedtag serve did not start"
                time.sleep(0.2)
            r = httpx.post(url + "/v1/tag", files={"file": ("speech001.wav", audio("speech001.wav").read_bytes())},
                           timeout=60)
            assert r.status_code == 200 and r.json()["tags"][0]["label"] == "Speech"
            assert httpx.post(url + "/v1/tag", content=b"nope", timeout=60).status_code == 415
            assert httpx.get(url + "/v1/info", timeout=10).json()["limits"]["max_duration_s"] == 5
        finally:
            proc.terminate()
            proc.wait(30)
    lines = log.read_text().splitlines()
    assert any("serving backbone efficientat-mn04 (527 labels)" in x for x in lines)
    tagged = [x for x in lines if "POST /v1/tag" in x]
    assert len(tagged) == 2 and " 200 " in tagged[0] and "clip 1.90 s" in tagged[0] and " 415 " in tagged[1]
