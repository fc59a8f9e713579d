"""One header, one reader and one atomic writer for every artifact embedtag writes.

An artifact is a directory whose metadata file (``manifest.json`` or ``config.json``) starts with the same
header::

    {"kind": "embedding-store" | "similarity-index" | "head" | "finetuned-run",
     "format_version": 1, "embedtag_version": "0.1.0", "created_at": "2026-12-03T07:40:00Z", ...}

:func:`identify` says what a directory is (also for artifacts written before the header existed),
:func:`read_header` opens one as the kind a caller expects and otherwise names what it is ("X is a similarity
index, not an embedding store"), :func:`prepare_output` refuses to write over an artifact of another kind, and
:func:`atomic_write` / :func:`atomic_write_json` never leave a half-written file visible (the temporary file
is hidden, removed on failure, and the final file honours the umask).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import time
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from embedtag.errors import ArtifactError, WrongKindError

STORE = "embedding-store"
INDEX = "similarity-index"
HEAD = "head"
RUN = "finetuned-run"

#: kind -> (metadata file, what to call it in a sentence, the command that makes one)
KINDS: dict[str, tuple[str, str, str]] = {
    STORE: ("manifest.json", "an embedding store", "embedtag extract"),
    INDEX: ("manifest.json", "a similarity index", "embedtag index build"),
    HEAD: ("config.json", "a head", "embedtag fit-head"),
    RUN: ("config.json", "a fine-tuned run", "embedtag finetune"),
}
HEADER_KEYS = ("kind", "format_version", "embedtag_version", "created_at")


def describe(kind: str) -> str:
    """``"embedding-store"`` -> ``"an embedding store"``."""
    return KINDS[kind][1] if kind in KINDS else f"a {kind!r} artifact"


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def header(kind: str, format_version: int) -> dict:
    """The common header of a new artifact of ``kind``."""
    from embedtag import __version__

    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    return {"kind": kind, "format_version": int(format_version), "embedtag_version": __version__,
            "created_at": now_utc()}


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class ArtifactInfo:
    """What :func:`identify` found: the kind, the directory, the metadata file and its parsed JSON."""

    kind: str
    path: Path
    meta_path: Path
    meta: dict

    @property
    def format_version(self) -> int:
        v = self.meta.get("format_version", 1)
        return v if isinstance(v, int) and not isinstance(v, bool) else -1


def _legacy_kind(name: str, meta: dict) -> str | None:
    """The kind of metadata written before the common header (format 1 of each artifact)."""
    kind = meta.get("kind")
    if kind in KINDS and KINDS[kind][0] == name:
        return kind
    if name == "manifest.json":
        if meta.get("artifact") == "embedtag-similarity-index":
            return INDEX
        if "backbone" in meta and "embedding_dim" in meta and "pooling" in meta:
            return STORE
    else:
        if meta.get("format") == "embedtag-head":
            return HEAD
        if kind == "finetuned":
            return RUN
    return None


def load_json(path: Path, error: type[ArtifactError] = ArtifactError) -> dict:
    """A metadata file's JSON object; ``error`` naming the file when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path} is corrupt: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path} is corrupt: expected a JSON object, got {type(data).__name__}")
    return data


def identify(path: str | os.PathLike) -> ArtifactInfo | None:
    """What artifact ``path`` is, or None when it is none (not a directory, or no metadata file).

    A metadata file that exists but is not valid JSON raises :class:`ArtifactError` naming it."""
    path = Path(path)
    if not path.is_dir():
        return None
    for name in ("manifest.json", "config.json"):
        meta_path = path / name
        if meta_path.is_file():
            meta = load_json(meta_path)
            kind = _legacy_kind(name, meta)
            if kind is not None:
                return ArtifactInfo(kind, path, meta_path, meta)
    return None


def what_is(path: str | os.PathLike) -> str:
    """A phrase for error messages: "a similarity index", "a file", "an empty directory", "not found"..."""
    path = Path(path)
    if not path.exists():
        return "not found"
    if path.is_file():
        return "a file"
    try:
        info = identify(path)
    except ArtifactError:
        return "a directory with a corrupt metadata file"
    if info is not None:
        return describe(info.kind)
    return "an empty directory" if not any(path.iterdir()) else "a directory that is no embedtag artifact"


def read_header(path: str | os.PathLike, expect: str | tuple[str, ...], format_version: int) -> ArtifactInfo:
    """Open ``path`` as an artifact of kind ``expect`` (one kind or several) and return its metadata.

    Raises :class:`WrongKindError` when it is something else, naming what it is and the command that makes
    the expected kind, and :class:`ArtifactError` when it is corrupt or newer than ``format_version``."""
    path = Path(path)
    kinds = (expect,) if isinstance(expect, str) else tuple(expect)
    wanted = " or ".join(describe(k) for k in kinds)
    info = identify(path)
    if info is None or info.kind not in kinds:
        what = what_is(path)
        hint = "" if info is not None else f"; make one with `{KINDS[kinds[0]][2]}`"
        raise WrongKindError(f"{path} is {what}, not {wanted}{hint}", found=info.kind if info else None)
    v = info.meta.get("format_version", 1)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ArtifactError(f"{info.meta_path}: format_version must be an integer, got {v!r}")
    if v > format_version:
        raise ArtifactError(f"{path} was written by a newer embedtag (format {v}, this one reads up to "
                            f"{format_version}); upgrade embedtag")
    return info


def prepare_output(path: str | os.PathLike, kind: str, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check that ``path`` may receive an artifact of ``kind`` and create the directory.

    - a file, or an artifact of another kind: :class:`WrongKindError`, whatever ``overwrite`` says;
    - an artifact of the same kind: allowed with ``resume`` (stores append) or ``overwrite``, else refused;
    - a non-empty directory that is no artifact: refused (it is someone's data).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WrongKindError(f"{path} is a file; give a directory to write {describe(kind)} into")
    info = identify(path)
    if info is not None and info.kind != kind:
        raise WrongKindError(f"refusing to write {describe(kind)} into {path}: it is {describe(info.kind)}; "
                             "choose another --out", found=info.kind)
    if info is not None and not (resume or overwrite):
        raise ArtifactError(f"{path} already holds {describe(kind)}; pass --overwrite to replace it")
    if info is None and path.is_dir() and any(p for p in path.iterdir() if not p.name.startswith(".")):
        raise ArtifactError(f"refusing to write {describe(kind)} into {path}: the directory is not empty and "
                            "holds no embedtag artifact")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------ writing
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write ``path`` through ``write(tmp_path)`` then rename into place: readers see the old file or the new
    one, never a part. The temporary file is hidden (``.tmp-*``), removed on any failure, and the result gets
    the permissions the umask gives a new file (not mkstemp's 0600). A full disk is reported as such."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ArtifactError(f"no space left on device while writing {path}; nothing was replaced") from None
        raise
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """JSON with ``allow_nan=False``: an infinite or NaN value is an error here, not invalid JSON on disk."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False, default=_json_default)
    except ValueError as exc:
        raise ArtifactError(f"cannot write {path}: {exc} (a value is NaN or infinite)") from None
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _json_default(v):
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def _unlink_quietly(p) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def clean_temporaries(folder: str | os.PathLike, older_than_s: float = 0.0) -> int:
    """Remove ``.tmp-*`` files a killed writer left in ``folder``; returns how many. Only files older than
    ``older_than_s`` go, so a concurrent writer's file in flight is left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    cutoff = time.time() - older_than_s
    for p in folder.glob(".tmp-*"):
        try:
            if p.is_file() and p.stat().st_mtime <= cutoff:
                p.unlink()
                n += 1
        except OSError:
            pass
    return n


# ------------------------------------------------------------------------------------------------ predictors
def load_predictor(path: str | os.PathLike, device: str = "auto"):
    """A trained head (``embedtag fit-head``) or a fine-tuned run (``embedtag finetune``), whichever ``path``
    holds. Both answer ``predict_proba``-style calls and carry ``vocabulary``; see their classes."""
    info = read_header(path, (HEAD, RUN), format_version=10**6)  # each loader checks its own version
    if info.kind == RUN:
        from embedtag.finetune import load_finetuned

        return load_finetuned(path, device=device)
    from embedtag.heads import load_head

    return load_head(path)


# ------------------------------------------------------------------------------------------------ locking
class lock:
    """An exclusive advisory lock on an artifact directory (``DIR/.lock``, ``fcntl.flock``), held by one
    writer at a time across processes::

        with artifacts.lock(store_dir, timeout_s=10, what="embedding store"):
            ...  # append shards, swap an index version

    Waits up to ``timeout_s`` seconds (0: do not wait), then raises :class:`ArtifactError` naming the
    directory and the process holding it. The lock goes with the process, so a killed writer never leaves a
    stale lock behind."""

    def __init__(self, directory: str | os.PathLike, timeout_s: float = 30.0, what: str = "artifact"):
        self.directory, self.timeout_s, self.what = Path(directory), float(timeout_s), what
        self._fd: int | None = None

    def __enter__(self):
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    try:
                        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                    except OSError:
                        holder = "another process"
                    os.close(fd)
                    raise ArtifactError(f"{self.directory}: another embedtag process ({holder}) is writing this "
                                        f"{self.what}; wait for it to finish or stop it") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc):
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        return False


# ------------------------------------------------------------------------------------------------ validation
def validated(data: dict, cls: type, where: str | os.PathLike, *, error: type[Exception] = ArtifactError,
              allow_unknown: bool = True):
    """``cls(**data)`` for a dataclass ``cls``, each field checked against ``cls``'s type hints first: a field
    that is missing (and has no default) or of the wrong type raises ``error`` naming ``where`` (the file) and
    the field, e.g. "STORE/manifest.json: field 'embedding_dim' must be an integer, got 'abc'". Keys ``cls``
    does not know are ignored (newer writers may add some), or refused with ``allow_unknown=False``."""
    if not isinstance(data, dict):
        raise error(f"{where} is corrupt: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    if not allow_unknown:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise error(f"{where}: unknown field {unknown[0]!r}")
    values = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise error(f"{where}: field {f.name!r} is missing")
            continue
        v = data[f.name]
        hint = hints.get(f.name)
        if hint is not None and not _fits(v, hint):
            raise error(f"{where}: field {f.name!r} must be {_describe(hint)}, got {v!r}")
        values[f.name] = v
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # a check of cls's own __post_init__
        raise error(f"{where}: {exc}") from None


def _fits(v, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, a) for a in args)
    if hint is type(None):
        return v is None
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if hint is str:
        return isinstance(v, str)
    if hint is list or origin is list:
        return isinstance(v, list) and (not args or all(_fits(x, args[0]) for x in v))
    if hint is dict or origin is dict:
        return isinstance(v, dict)
    if hint is tuple or origin is tuple:
        return isinstance(v, (list, tuple))
    return True  # a type this reader does not check


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "an object"}
    if hint in names:
        return names[hint]
    if hint is list or origin is list:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    return str(hint)
