"""Model weights: where they are looked for, how they are fetched and verified.

Lookup order for a weight file of a backbone family (``panns``, ``yamnet``, ``efficientat``):

1. an explicit path (``--weights PATH`` / ``weights=``): used as is, never modified, deleted or re-downloaded;
2. ``$EMBEDTAG_WEIGHTS_DIR/<family>/<file>``: a mirror laid out like ``../shared/models``;
3. the cache, ``$EMBEDTAG_HOME/weights/<family>/<file>`` (``EMBEDTAG_HOME`` defaults to ``~/.cache/embedtag``);
4. a download from the official URL into the cache: streamed to a temporary file with a progress bar, checked
   against the published checksum, then renamed into place atomically (a partial file is never left behind).

With ``EMBEDTAG_OFFLINE=1`` (or ``offline=True``) step 4 is replaced by one error that names the file and
where to put it. Nothing in this module runs at import time, so ``import embedtag`` never touches the network.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from embedtag.errors import WeightsError


@dataclass(frozen=True)
class WeightFile:
    """One released weight file (or directory, for archives) of a backbone family."""

    family: str
    #: path inside the family folder, e.g. "Cnn14_mAP=0.431.pth" or "saved_model" (a directory)
    relpath: str
    url: str
    #: "sha256:<hex>" or "md5:<hex>" as published by the host (Zenodo publishes md5); None if none is published
    checksum: str | None = None
    size_bytes: int | None = None
    #: "tar.gz" when the URL serves an archive that unpacks into ``relpath``
    archive: str | None = None
    #: for directories: expected sha256 of files inside, checked after unpacking
    files_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.archive is not None


def home_dir() -> Path:
    """``$EMBEDTAG_HOME`` or ``~/.cache/embedtag``."""
    return Path(os.environ.get("EMBEDTAG_HOME") or Path.home() / ".cache" / "embedtag").expanduser()


def cache_dir() -> Path:
    return home_dir() / "weights"


def mirror_dir() -> Path | None:
    value = os.environ.get("EMBEDTAG_WEIGHTS_DIR")
    return Path(value).expanduser() if value else None


def is_offline() -> bool:
    return os.environ.get("EMBEDTAG_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def candidates(wf: WeightFile) -> list[Path]:
    """Where ``wf`` is looked for, in order (mirror, then cache)."""
    out = []
    mirror = mirror_dir()
    if mirror is not None:
        out.append(mirror / wf.family / wf.relpath)
    out.append(cache_dir() / wf.family / wf.relpath)
    return out


def find(wf: WeightFile) -> Path | None:
    """The first existing, non-empty candidate of ``wf``, without downloading."""
    for path in candidates(wf):
        if path.is_dir() if wf.is_dir else (path.is_file() and path.stat().st_size > 0):
            return path
    return None


def resolve(wf: WeightFile, weights: str | os.PathLike | None = None, *, offline: bool | None = None,
            progress: bool = True) -> Path:
    """Return a local path for ``wf``; download it if allowed and needed (see the module docstring)."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsError(f"weights file not found: {path}")
        if path.is_file() and path.stat().st_size == 0:
            raise WeightsError(f"weights file is empty (0 bytes): {path}")
        return path
    found = find(wf)
    if found is not None:
        return found
    offline = is_offline() if offline is None else offline
    if offline:
        raise WeightsError(_missing_message(wf, "offline mode (EMBEDTAG_OFFLINE=1)"))
    try:
        return download(wf, progress=progress)
    except WeightsError:
        raise
    except Exception as exc:  # network errors: say what failed and how to proceed without a network
        raise WeightsError(_missing_message(wf, f"download failed: {exc}")) from None


def _missing_message(wf: WeightFile, why: str) -> str:
    where = candidates(wf)
    kind = "directory" if wf.is_dir else "file"
    return (f"{wf.family} weights {kind} '{wf.relpath}' not found and {why}. Download {wf.url} "
            f"{'and unpack it ' if wf.is_dir else ''}to {where[-1]}"
            + (f", or set EMBEDTAG_WEIGHTS_DIR to a folder holding {wf.family}/{wf.relpath}" if len(where) == 1
               else f" (or to {where[0]})")
            + ", or pass --weights PATH.")


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: sha256 of weight files by (path, size, mtime, inode): in memory, and on disk in ``DIGESTS_NAME`` under
#: ``EMBEDTAG_HOME`` so that a new process does not hash the weights again (Cnn14: 327 MB, ~0.5 s per run)
_DIGEST_CACHE: dict[str, str] = {}
DIGESTS_NAME = "weight_digests.json"
_disk_loaded = False


def _digest_key(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def _cached_digest(p: Path) -> str:
    """sha256 of the file ``p``, from the digest cache when its path, size, mtime and inode are unchanged."""
    global _disk_loaded
    if not _disk_loaded:
        _disk_loaded = True
        try:
            import json

            stored = json.loads((home_dir() / DIGESTS_NAME).read_text(encoding="utf-8"))
            if isinstance(stored, dict):
                _DIGEST_CACHE.update({k: v for k, v in stored.items() if isinstance(v, str)})
        except (OSError, ValueError):
            pass  # no cache yet, or unreadable: hash again
    key = _digest_key(p)
    if key not in _DIGEST_CACHE:
        _DIGEST_CACHE[key] = file_digest(p)
        try:
            from embedtag.artifacts import atomic_write_json

            atomic_write_json(home_dir() / DIGESTS_NAME, _DIGEST_CACHE)
        except Exception:  # a read-only home only costs the hashing next time
            pass
    return _DIGEST_CACHE[key]


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a weight file, or of the sorted (relative path, sha256) list of a directory. Each file's digest
    is cached by path, size, mtime and inode (in this process and under ``EMBEDTAG_HOME``)."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}:{_cached_digest(f)}\n".encode())
        return h.hexdigest()
    return _cached_digest(p)


def verify(path: Path, checksum: str | None) -> None:
    if not checksum:
        return
    algorithm, _, expected = checksum.partition(":")
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise WeightsError(f"checksum mismatch for {path}: {algorithm} {actual} != expected {expected} "
                           "(corrupt or different file)")


def download(wf: WeightFile, *, progress: bool = True) -> Path:
    """Fetch ``wf`` into the cache atomically and return its path."""
    import shutil
    import tarfile
    import tempfile
    import urllib.request  # here, not at import: `embedtag --help` never pays for these

    target = cache_dir() / wf.family / wf.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(wf.url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or wf.size_bytes or 0) or None
            _copy_with_progress(resp, out, total, f"{wf.family}/{wf.relpath}", progress)
        verify(tmp, wf.checksum)
        if wf.is_dir:
            unpack_dir = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
            try:
                with tarfile.open(tmp) as tar:
                    tar.extractall(unpack_dir, filter="data")
                for rel, digest in wf.files_sha256.items():
                    f = unpack_dir / rel
                    if not f.is_file() or file_digest(f) != digest:
                        raise WeightsError(f"{wf.url}: unpacked file {rel} is missing or has the wrong sha256")
                os.replace(unpack_dir, target)
            finally:
                shutil.rmtree(unpack_dir, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _copy_with_progress(src, dst, total: int | None, label: str, show: bool) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  disable=not show, transient=True) as bar:
        task = bar.add_task(f"downloading {label}", total=total)
        for chunk in iter(lambda: src.read(1 << 20), b""):
            dst.write(chunk)
            bar.advance(task, len(chunk))
