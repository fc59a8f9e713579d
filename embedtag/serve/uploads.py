"""Request bodies -> a temporary audio file, size-checked while streaming, removed whatever happens.

A body is either ``multipart/form-data`` with the audio in the field ``file`` (what browsers and
``curl -F file=@x.wav`` send) or the raw audio bytes (``curl --data-binary @x.wav``). Either way the bytes go
straight to a file in the server's upload folder as they arrive; the first byte past the limit ends the request
with 413, so an oversized upload is never held whole, in memory or on disk. The file name a client sends only
chooses the temporary file's extension (when it is a known audio one); it never becomes a path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from embedtag.embeddings.audio import AUDIO_EXTENSIONS

#: content types -> extension of the temporary file (libsndfile recognises the formats by content anyway)
_TYPES = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/wave": ".wav", "audio/vnd.wave": ".wav",
          "audio/flac": ".flac", "audio/x-flac": ".flac", "audio/ogg": ".ogg", "audio/opus": ".opus",
          "audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/aiff": ".aiff", "audio/x-aiff": ".aiff"}


class UploadError(Exception):
    """Answered as JSON ``{"error", "detail"}`` with ``status``."""

    def __init__(self, status: int, error: str, detail: str):
        self.status, self.error, self.detail = status, error, detail
        super().__init__(detail)


@dataclass
class Upload:
    path: Path
    filename: str
    size: int


def _suffix(filename: str | None, content_type: str | None) -> str:
    ext = Path(filename or "").suffix.lower()
    if ext in AUDIO_EXTENSIONS:
        return ext
    return _TYPES.get((content_type or "").split(";")[0].strip().lower(), ".wav")


def _too_big(max_bytes: int) -> UploadError:
    return UploadError(413, "upload_too_large", f"the upload is larger than the server's limit of "
                                                f"{max_bytes / 1e6:.0f} MB (--max-upload-mb)")


@contextlib.asynccontextmanager
async def receive(request, folder: str | os.PathLike, max_bytes: int):
    """``async with receive(request, folder, max_bytes) as upload``: the body as a temporary file in ``folder``,
    deleted on exit (also when the request fails or the client disconnects)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:  # multipart adds a little
        raise _too_big(max_bytes)
    fd, tmp = tempfile.mkstemp(prefix="embedtag-upload-", suffix=".part", dir=folder)
    path = Path(tmp)
    final: Path | None = None
    try:
        with os.fdopen(fd, "wb") as f:
            ctype = request.headers.get("content-type", "")
            if ctype.lower().startswith("multipart/form-data"):
                filename, part_type, size = await _multipart(request, ctype, f, max_bytes)
            else:
                filename, part_type, size = request.query_params.get("filename"), ctype, 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_big(max_bytes)
                    f.write(chunk)
        if size == 0:
            raise UploadError(422, "empty_upload", "the upload holds no bytes; send an audio file")
        final = path.with_name(path.stem + _suffix(filename, part_type))
        os.replace(path, final)
        yield Upload(final, os.path.basename(filename or "upload"), size)
    finally:
        for p in (path, final):
            if p is not None:
                with contextlib.suppress(OSError):
                    p.unlink()


async def _multipart(request, content_type: str, out, max_bytes: int) -> tuple[str | None, str | None, int]:
    """Stream a multipart body; the part named ``file`` goes to ``out``. Returns (filename, content type, size)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "bad_request", "multipart body without a boundary")
    st = {"field": b"", "value": b"", "headers": {}, "is_file": False, "found": False, "size": 0,
          "filename": None, "type": None, "over": False}

    def on_part_begin():
        st["headers"] = {}
        st["is_file"] = False

    def on_header_field(data, start, end):
        st["field"] += data[start:end]

    def on_header_value(data, start, end):
        st["value"] += data[start:end]

    def on_header_end():
        st["headers"][st["field"].decode("latin-1").lower()] = st["value"].decode("utf-8", "replace")
        st["field"], st["value"] = b"", b""

    def on_headers_finished():
        _, disp = parse_options_header(st["headers"].get("content-disposition", ""))
        if disp.get(b"name") == b"file" and not st["found"]:
            st["is_file"] = st["found"] = True
            fn = disp.get(b"filename")
            st["filename"] = fn.decode("utf-8", "replace") if fn is not None else None
            st["type"] = st["headers"].get("content-type")

    def on_part_data(data, start, end):
        if st["is_file"] and not st["over"]:
            st["size"] += end - start
            if st["size"] > max_bytes:
                st["over"] = True
                return
            out.write(data[start:end])

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if st["over"]:
                raise _too_big(max_bytes)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors have no common base
        raise UploadError(400, "bad_request", f"malformed multipart body: {exc}") from None
    if not st["found"]:
        raise UploadError(422, "missing_file", "the multipart body has no field named 'file'; send the audio as "
                                               "-F file=@clip.wav, or as the raw request body")
    return st["filename"], st["type"], st["size"]
