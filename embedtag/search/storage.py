"""The files of a similarity index on disk: versioned, switched atomically, checked before they are trusted.

Layout (format 2)::

    INDEX/
      manifest.json            common artifact header + index settings; "current": the version readers open
      v000003/                 one complete version: written as .tmp-v000003-*, renamed when complete
        index.faiss            faiss.write_index; row i of the index is row i of ids.parquet
        ids.parquet            clip_id, path, labels of each indexed clip
        preprocess.safetensors mean / whitening matrix (absent for preprocess="none")
      v000002/                 the previous version, kept for readers that opened the old manifest
      .lock                    held by writers (artifacts.lock)

An update writes a new version directory, then switches ``manifest.json`` (one atomic rename), then removes
older versions and temporaries. A kill at any point leaves the previous manifest and its complete version.
Format 1 indexes (files beside manifest.json, ``"artifact": "embedtag-similarity-index"``) still load.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import sys
from contextlib import contextmanager
from pathlib import Path

from embedtag.errors import ArtifactError

MANIFEST_NAME = "manifest.json"
FAISS_NAME = "index.faiss"
IDS_NAME = "ids.parquet"
PREPROCESS_NAME = "preprocess.safetensors"
VERSION_RE = re.compile(r"^v(\d{6})$")
#: memory a FAISS read may take beyond twice the file's size (threads, arenas); a header that makes it ask for
#: more is forged or corrupt
READ_SLACK_BYTES = 4 << 30


def version_dir(directory: Path, current: str | None) -> Path:
    """Where the files of version ``current`` are (format 1: the index directory itself)."""
    return directory if current is None else directory / current


def versions(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and VERSION_RE.match(p.name))


def write_version(directory: Path, write_files) -> str:
    """Write a new complete version directory through ``write_files(folder)`` and return its name. The caller
    holds the index lock; the version is invisible to readers until the manifest points at it."""
    existing = [int(VERSION_RE.match(v).group(1)) for v in versions(directory)]
    name = f"v{max(existing, default=0) + 1:06d}"
    tmp = directory / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_files(tmp)
        for f in tmp.iterdir():  # the data must be on disk before the pointer to it is
            _fsync(f)
        os.rename(tmp, directory / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(directory)
    return name


def clean(directory: Path, keep: set[str]) -> None:
    """After a switch: remove versions other than ``keep``, ``.tmp-*`` leftovers of killed writers, and the files
    of a format 1 index (now superseded by a version directory). The caller holds the index lock."""
    for p in directory.iterdir():
        name = p.name
        try:
            if p.is_dir() and VERSION_RE.match(name) and name not in keep:
                shutil.rmtree(p)
            elif name.startswith(".tmp-") and p.is_dir():
                shutil.rmtree(p)
            elif name.startswith(".tmp-"):
                p.unlink()
            elif name in (FAISS_NAME, IDS_NAME, PREPROCESS_NAME) and p.is_file():
                p.unlink()
        except OSError:
            pass  # cleaning is best effort: the next write tries again


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- checks
def faiss_header(path: Path) -> tuple[str, int, int]:
    """(fourcc, d, ntotal) from the first bytes of a FAISS index file, without reading the rest. Every FAISS
    index starts with a four-character code, then ``d`` (int32) and ``ntotal`` (int64)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read ({exc.strerror})") from None
    if len(head) < 16:
        raise ArtifactError(f"{path}: not a FAISS index (only {len(head)} bytes)")
    fourcc = head[:4].decode("latin-1")
    d, ntotal = struct.unpack("<iq", head[4:16])
    return fourcc, d, ntotal


def check_faiss_file(path: Path, *, n_ids: int, dim: int, min_bytes_per_vector: float, ids_path: Path) -> None:
    """Refuse an ``index.faiss`` whose header does not fit the index before FAISS allocates anything for it: the
    vector count must equal the ids' and the manifest's, the dimension the index space's, and the file must be
    large enough to hold that many vectors."""
    fourcc, d, ntotal = faiss_header(path)
    size = path.stat().st_size
    if ntotal != n_ids:
        raise ArtifactError(f"{path}: its header says {ntotal} vectors but {ids_path} lists {n_ids} clips; the "
                            "index is corrupt or was tampered with; rebuild it with `embedtag index build`")
    if d != dim:
        raise ArtifactError(f"{path}: its header says {d}-d vectors, the manifest {dim}-d; rebuild the index")
    if ntotal * min_bytes_per_vector > size:
        raise ArtifactError(f"{path}: {size} bytes cannot hold the {ntotal} vectors its header claims; the file "
                            "is truncated or forged; rebuild the index")
    if fourcc in ("IxFI", "IxF2"):  # flat: header (37 bytes), then the float32 vectors as one counted array
        with open(path, "rb") as f:
            f.seek(33)
            metric_type = struct.unpack("<i", f.read(4))[0]
            if metric_type > 1:
                f.read(4)
            raw = f.read(8)
        count = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if count != ntotal * d or size != _flat_data_offset(metric_type) + 4 * count:
            raise ArtifactError(f"{path}: its vector array ({count} floats) does not match its header "
                                f"({ntotal} x {d}) and size ({size} bytes); rebuild the index")


def _flat_data_offset(metric_type: int) -> int:
    """Offset of a flat index's vectors: fourcc 4, d 4, ntotal 8, two dummies 16, is_trained 1, metric 4,
    metric_arg 4 (only for metric types above 1), array length 8."""
    return 37 + (4 if metric_type > 1 else 0) + 8


def read_faiss(path: Path):
    """``faiss.read_index`` with the address space capped at twice the file size plus ``READ_SLACK_BYTES``
    (Linux): a size field inside the file that asks for more than that is refused as an allocation failure,
    not honoured with gigabytes of zeroed memory. The cap is process-wide while the file is read (a fraction of
    a second per 100 MB): another thread allocating gigabytes at that moment would fail too."""
    import faiss

    try:
        with _memory_cap(2 * path.stat().st_size + READ_SLACK_BYTES):
            return faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as exc:
        why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, MemoryError) or "bad_alloc" in why or "alloc" in why.lower():
            why = "a size field asks for more memory than the file can hold; it is corrupt or forged"
        raise ArtifactError(f"{path}: not a readable FAISS index ({why}); rebuild it with "
                            "`embedtag index build`") from None


@contextmanager
def _memory_cap(extra_bytes: int):
    """Temporarily limit this process's address space to what it uses now plus ``extra_bytes``."""
    try:
        import resource
    except ImportError:  # Windows
        yield
        return
    if not sys.platform.startswith("linux"):  # RLIMIT_AS is not enforced elsewhere
        yield
        return
    try:
        with open("/proc/self/statm") as f:
            vm_bytes = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = vm_bytes + int(extra_bytes)
        if soft != resource.RLIM_INFINITY:
            cap = min(cap, soft)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def read_ids(path: Path) -> tuple[list[str], list[str], list[list[str] | None]]:
    """clip ids, paths and labels from ``ids.parquet``; ArtifactError naming the file and column when it is
    missing, corrupt or malformed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the index directory is incomplete; rebuild it with "
                            "`embedtag index build`")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ArtifactError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]}); rebuild the "
                            "index") from None
    n = table.num_rows
    cols = {}
    for name, typ in (("clip_id", pa.string()), ("path", pa.string()), ("labels", pa.list_(pa.string()))):
        if name not in table.column_names:
            if name == "clip_id":
                raise ArtifactError(f"{path}: column 'clip_id' is missing; rebuild the index")
            cols[name] = [None if name == "labels" else ""] * n
            continue
        try:
            cols[name] = table.column(name).cast(typ).to_pylist()
        except (pa.ArrowException, TypeError) as exc:
            raise ArtifactError(f"{path}: column {name!r} has type {table.schema.field(name).type}, expected "
                                f"{typ} ({exc})") from None
    ids = cols["clip_id"]
    if any(c is None for c in ids):
        raise ArtifactError(f"{path}: column 'clip_id' has empty values; rebuild the index")
    if len(set(ids)) != len(ids):
        raise ArtifactError(f"{path}: column 'clip_id' repeats clip ids; rebuild the index")
    return ids, [p or "" for p in cols["path"]], cols["labels"]
