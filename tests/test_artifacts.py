"""The shared artifact layer: header, kind detection, wrong-kind messages, atomic writes, the output guard, locks."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest

from embedtag import artifacts as A
from embedtag.errors import ArtifactError, StoreError, WrongKindError


def _write(d, name, meta):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(meta))
    return d


LEGACY = {
    A.STORE: ("manifest.json", {"backbone": "yamnet", "embedding_dim": 1024, "pooling": "mean", "format_version": 1}),
    A.INDEX: ("manifest.json", {"artifact": "embedtag-similarity-index", "format_version": 1}),
    A.HEAD: ("config.json", {"format": "embedtag-head", "kind": "mlp", "format_version": 1}),
    A.RUN: ("config.json", {"kind": "finetuned", "format_version": 1}),
}


@pytest.mark.parametrize("kind", list(LEGACY))
def test_identify_new_and_legacy_headers(tmp_path, kind):
    name, legacy = LEGACY[kind]
    assert A.identify(_write(tmp_path / "old", name, legacy)).kind == kind
    new = {**A.header(kind, 2), "whatever": 1}
    assert set(A.HEADER_KEYS) <= set(new)
    info = A.identify(_write(tmp_path / "new", name, new))
    assert info.kind == kind and info.format_version == 2


@pytest.mark.parametrize("kind", list(LEGACY))
@pytest.mark.parametrize("expected", list(LEGACY))
def test_opening_as_the_wrong_kind_names_what_it_is(tmp_path, kind, expected):
    name, legacy = LEGACY[kind]
    d = _write(tmp_path / "a", name, legacy)
    if kind == expected:
        assert A.read_header(d, expected, 1).kind == kind
        return
    with pytest.raises(WrongKindError) as exc:
        A.read_header(d, expected, 1)
    assert str(exc.value) == f"{d} is {A.describe(kind)}, not {A.describe(expected)}"
    assert exc.value.found == kind
    assert isinstance(exc.value, StoreError)  # callers catching StoreError keep working


def test_not_an_artifact_says_how_to_make_one(tmp_path):
    with pytest.raises(WrongKindError, match="is not found, not an embedding store; make one with `embedtag extract`"):
        A.read_header(tmp_path / "missing", A.STORE, 1)
    (tmp_path / "f").write_text("x")
    with pytest.raises(WrongKindError, match="is a file, not a head"):
        A.read_header(tmp_path / "f", A.HEAD, 1)
    (tmp_path / "empty").mkdir()
    assert A.what_is(tmp_path / "empty") == "an empty directory"


def test_corrupt_and_newer_metadata(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest.json is corrupt"):
        A.read_header(d, A.STORE, 1)
    _write(d, "manifest.json", {**A.header(A.STORE, 9)})
    with pytest.raises(ArtifactError, match="written by a newer embedtag"):
        A.read_header(d, A.STORE, 1)
    _write(d, "manifest.json", {**A.header(A.STORE, 1), "format_version": "2"})
    with pytest.raises(ArtifactError, match="format_version must be an integer"):
        A.read_header(d, A.STORE, 1)


def test_prepare_output_refuses_other_kinds_and_existing_ones(tmp_path):
    run = _write(tmp_path / "run", *LEGACY[A.RUN])
    with pytest.raises(WrongKindError, match="it is a fine-tuned run"):
        A.prepare_output(run, A.HEAD, overwrite=True)
    head = _write(tmp_path / "head", *LEGACY[A.HEAD])
    with pytest.raises(ArtifactError, match="--overwrite"):
        A.prepare_output(head, A.HEAD)
    assert A.prepare_output(head, A.HEAD, overwrite=True) == head
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.wav").write_bytes(b"RIFF")
    with pytest.raises(ArtifactError, match="not empty"):
        A.prepare_output(data, A.INDEX)
    (tmp_path / "file").write_text("x")
    with pytest.raises(WrongKindError, match="is a file"):
        A.prepare_output(tmp_path / "file", A.STORE)
    assert A.prepare_output(tmp_path / "new" / "dir", A.STORE).is_dir()


def test_atomic_write_honours_umask_and_leaves_nothing_on_failure(tmp_path):
    old = os.umask(0o002)
    try:
        p = A.atomic_write_bytes(tmp_path / "x.bin", b"abc")
    finally:
        os.umask(old)
    assert p.read_bytes() == b"abc"
    assert oct(p.stat().st_mode & 0o777) == oct(0o664)  # not mkstemp's 0600: a group can share the store

    def boom(tmp):
        open(tmp, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ArtifactError, match=r"no space left on device while writing .*x.bin; nothing was replaced"):
        A.atomic_write(tmp_path / "x.bin", boom)
    assert (tmp_path / "x.bin").read_bytes() == b"abc"
    assert [q.name for q in tmp_path.iterdir()] == ["x.bin"]


def test_atomic_write_json_refuses_non_finite_values(tmp_path):
    with pytest.raises(ArtifactError, match="NaN or infinite"):
        A.atomic_write_json(tmp_path / "c.json", {"C": float("inf")})
    assert not (tmp_path / "c.json").exists()


def test_clean_temporaries_spares_fresh_files(tmp_path):
    old, fresh = tmp_path / ".tmp-old.parquet", tmp_path / ".tmp-new.parquet"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(old, (0, 0))
    assert A.clean_temporaries(tmp_path, older_than_s=60) == 1
    assert not old.exists() and fresh.exists()


def test_lock_excludes_another_process_and_dies_with_it(tmp_path):
    code = textwrap.dedent(f"""
        import sys, time
        from embedtag.artifacts import lock
        with lock({str(tmp_path)!r}, what="embedding store"):
            print("locked", flush=True)
            time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(ArtifactError, match=rf"another embedtag process \(pid {child.pid}\) is writing this "
                                                 "embedding store"):
            with A.lock(tmp_path, timeout_s=0.2, what="embedding store"):
                pass
    finally:
        child.kill()
        child.wait()
    with A.lock(tmp_path, timeout_s=2):  # a killed holder leaves no stale lock
        pass
