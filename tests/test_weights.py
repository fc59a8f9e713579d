"""Weights manager: mirror, cache, offline errors, checksummed atomic downloads (file:// URLs stand in for hubs)."""

from __future__ import annotations

import hashlib

import pytest

from embedtag.embeddings import weights as W
from embedtag.errors import WeightsError


def _wf(tmp_path, payload: bytes, checksum: str | None):
    src = tmp_path / "remote.bin"
    src.write_bytes(payload)
    return W.WeightFile("testfam", "model.bin", src.as_uri(), checksum=checksum)


def test_download_verifies_checksum_and_renames_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDTAG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EMBEDTAG_WEIGHTS_DIR", raising=False)
    payload = b"weights" * 1000
    wf = _wf(tmp_path, payload, "sha256:" + hashlib.sha256(payload).hexdigest())
    path = W.resolve(wf, offline=False, progress=False)
    assert path == tmp_path / "home" / "weights" / "testfam" / "model.bin"
    assert path.read_bytes() == payload
    assert [p.name for p in path.parent.iterdir()] == ["model.bin"]  # no temporary left behind


def test_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDTAG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EMBEDTAG_WEIGHTS_DIR", raising=False)
    wf = _wf(tmp_path, b"truncated", "md5:" + "0" * 32)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        W.resolve(wf, offline=False, progress=False)
    assert not any((tmp_path / "home" / "weights" / "testfam").iterdir())


def test_offline_error_says_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDTAG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EMBEDTAG_WEIGHTS_DIR", str(tmp_path / "mirror"))
    wf = W.WeightFile("panns", "Cnn14_mAP=0.431.pth", "https://example.invalid/Cnn14.pth")
    with pytest.raises(WeightsError) as exc:
        W.resolve(wf, offline=True)
    msg = str(exc.value)
    assert "Cnn14_mAP=0.431.pth" in msg and "https://example.invalid/Cnn14.pth" in msg
    assert str(tmp_path / "home" / "weights" / "panns") in msg and str(tmp_path / "mirror") in msg


def test_mirror_is_used_before_cache_and_explicit_path_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDTAG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EMBEDTAG_WEIGHTS_DIR", str(tmp_path / "mirror"))
    wf = W.WeightFile("fam", "w.bin", "https://example.invalid/w.bin")
    (tmp_path / "mirror" / "fam").mkdir(parents=True)
    (tmp_path / "mirror" / "fam" / "w.bin").write_bytes(b"x")
    assert W.resolve(wf, offline=True) == tmp_path / "mirror" / "fam" / "w.bin"
    mine = tmp_path / "mine.bin"
    mine.write_bytes(b"y")
    assert W.resolve(wf, mine, offline=True) == mine
    with pytest.raises(WeightsError, match="not found"):
        W.resolve(wf, tmp_path / "nope.bin")


def test_importing_embedtag_does_not_import_frameworks():
    import subprocess
    import sys

    code = ("import sys, embedtag, embedtag.cli; "
            "bad=[m for m in ('tensorflow','torch','panns_inference','faiss') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_weight_digests_are_cached_on_disk_and_redone_when_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDTAG_HOME", str(tmp_path / "home"))
    f = tmp_path / "model.bin"
    f.write_bytes(b"a" * 4096)
    d = tmp_path / "saved_model"
    (d / "variables").mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(b"graph")
    (d / "variables" / "v.data").write_bytes(b"weights")
    monkeypatch.setattr(W, "_DIGEST_CACHE", {})
    monkeypatch.setattr(W, "_disk_loaded", False)
    first_f, first_d = W.fingerprint(f), W.fingerprint(d)
    assert first_f == hashlib.sha256(b"a" * 4096).hexdigest()
    assert (tmp_path / "home" / W.DIGESTS_NAME).is_file()
    # a new process (empty memory cache) takes the digests from disk: no file is read again
    monkeypatch.setattr(W, "_DIGEST_CACHE", {})
    monkeypatch.setattr(W, "_disk_loaded", False)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(W, "file_digest", lambda *a, **k: pytest.fail("hashed again despite the cache"))
        assert W.fingerprint(f) == first_f and W.fingerprint(d) == first_d
    # a file changed in place (new size or mtime), also one inside a directory, is hashed again
    f.write_bytes(b"b" * 4096)
    (d / "variables" / "v.data").write_bytes(b"other weights")
    assert W.fingerprint(f) == hashlib.sha256(b"b" * 4096).hexdigest()
    assert W.fingerprint(d) != first_d
    # an unreadable cache file is ignored, not an error
    (tmp_path / "home" / W.DIGESTS_NAME).write_text("{not json")
    monkeypatch.setattr(W, "_DIGEST_CACHE", {})
    monkeypatch.setattr(W, "_disk_loaded", False)
    assert W.fingerprint(f) == hashlib.sha256(b"b" * 4096).hexdigest()
