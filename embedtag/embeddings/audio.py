"""Audio front end: decode, mix to mono, resample, cut into windows.

Small pure functions in the spirit of soundfile / soxr: samples are float32 in [-1, 1], rates are in Hz and
durations carry their unit (``duration_s``). Every failure raises :class:`~embedtag.errors.AudioError`, whose
message names the file and the reason, so a batch job can record it and carry on.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from embedtag.errors import AudioError

log = logging.getLogger("embedtag.audio")

#: Extensions decoded through libsndfile (MP3 needs libsndfile >= 1.1, which the soundfile wheels bundle).
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64"})

#: Files longer than this are refused unless the caller raises the limit: a 3-hour file is usually a mistake.
DEFAULT_MAX_DURATION_S = 3 * 3600.0

#: soxr quality: "HQ" is transparent for embedding work and several times faster than "VHQ".
RESAMPLE_QUALITY = "HQ"


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says, before decoding."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def is_audio_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def _open(path: str | os.PathLike) -> tuple[Path, sf.SoundFile]:
    p = Path(path)
    if not p.exists():
        raise AudioError(p, "file not found")
    if p.is_dir():
        raise AudioError(p, "is a directory, not an audio file")
    if p.suffix.lower() not in AUDIO_EXTENSIONS:
        raise AudioError(p, f"unsupported file type {p.suffix or '(no extension)'!r}; "
                            f"expected one of {', '.join(sorted(AUDIO_EXTENSIONS))}")
    if p.stat().st_size == 0:
        raise AudioError(p, "empty file (0 bytes)")
    try:
        # bytes: a file name that is not UTF-8 (kept by Python as surrogates) still opens
        f = sf.SoundFile(os.fsencode(p))
    except Exception as exc:  # libsndfile's messages are terse; keep them but say what it means
        raise AudioError(p, f"cannot decode (corrupt or unsupported audio): {_short(exc)}") from None
    if f.frames <= 0 or f.samplerate <= 0:
        f.close()
        raise AudioError(p, "contains no audio samples")
    if p.suffix.lower() == ".wav":
        cut = wav_truncation(p)
        if cut is not None:  # libsndfile quietly decodes what is there: say so
            log.warning("%s is truncated: its header declares %d bytes of audio, the file holds %d; using those",
                        p, *cut)
    return p, f


def wav_truncation(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(declared, present)`` bytes of a RIFF/WAVE file's ``data`` chunk when the file is shorter than its header
    says (a copy cut short), else None. Reads only the chunk headers."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            for _ in range(64):  # a WAV has a handful of chunks; never walk a corrupt file for long
                chunk = fh.read(8)
                if len(chunk) < 8:
                    return None
                cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"data":
                    present = size - fh.tell()
                    # 0xFFFFFFFF / 0: streamed WAVs that never filled in their size
                    return (n, present) if 0 < n < 0xFFFFFFFF and n > present else None
                fh.seek(n + (n & 1), 1)
    except OSError:
        return None
    return None


def _info(p: Path, f: sf.SoundFile) -> AudioInfo:
    return AudioInfo(str(p), int(f.samplerate), int(f.channels), int(f.frames), f.format, f.subtype)


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read the header of ``path``; raise AudioError if it is not decodable audio."""
    p, f = _open(path)
    with f:
        return _info(p, f)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames,) or (frames, channels) -> (frames,) float32, channels averaged."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono float32 signal with soxr (no-op when the rates agree)."""
    if sample_rate == target_rate:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, sample_rate, target_rate, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


def read_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    *,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
    whole_up_to_s: float | None = None,
) -> tuple[np.ndarray | None, AudioInfo]:
    """Open ``path`` once: its header, and its samples as mono float32 at ``sample_rate`` (None: the file's rate).

    Files longer than ``whole_up_to_s`` are not decoded (samples is None): stream them with :func:`iter_windows`.
    Raises AudioError naming the file on any problem.
    """
    p, f = _open(path)
    with f:
        info = _info(p, f)
        _check_duration(info, max_duration_s)
        if whole_up_to_s is not None and info.duration_s > whole_up_to_s:
            return None, info
        try:
            data = f.read(dtype="float32", always_2d=False)
        except Exception as exc:
            raise AudioError(path, f"cannot decode (corrupt or truncated audio): {_short(exc)}") from None
    mono = to_mono(np.asarray(data))
    if mono.size == 0:
        raise AudioError(path, "contains no audio samples")
    _check_finite(path, mono)
    return resample(mono, info.sample_rate, sample_rate or info.sample_rate), info


def load_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    *,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
) -> tuple[np.ndarray, int]:
    """Decode ``path`` to mono float32, resampled to ``sample_rate`` (None keeps the file's rate).

    Returns ``(samples, sample_rate)``. Raises AudioError naming the file on any problem.
    """
    samples, info = read_audio(path, sample_rate, max_duration_s=max_duration_s)
    return samples, sample_rate or info.sample_rate


def iter_windows(
    path: str | os.PathLike,
    sample_rate: int,
    window_s: float,
    *,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
) -> Iterator[np.ndarray]:
    """Stream ``path`` as consecutive windows of ``window_s`` seconds at ``sample_rate`` (the last may be shorter).

    Decoding and resampling run block by block, so memory is bounded by the window, not by the file.
    """
    info = audio_info(path)
    _check_duration(info, max_duration_s)
    window = max(1, int(round(window_s * sample_rate)))
    block_frames = max(4096, int(math.ceil(window_s * info.sample_rate)))
    stream = None if info.sample_rate == sample_rate else soxr.ResampleStream(
        info.sample_rate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
    pending: list[np.ndarray] = []
    pending_n = 0
    got_any = False
    try:
        with sf.SoundFile(os.fsencode(info.path)) as f:
            while True:
                block = f.read(block_frames, dtype="float32", always_2d=True)
                last = block.shape[0] < block_frames
                mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
                if mono.size:
                    _check_finite(path, mono)
                out = mono if stream is None else stream.resample_chunk(mono, last=last)
                if out.size:
                    got_any = True
                    pending.append(out)
                    pending_n += out.size
                while pending_n >= window:
                    buf = np.concatenate(pending) if len(pending) > 1 else pending[0]
                    yield buf[:window]
                    rest = buf[window:]
                    pending, pending_n = ([rest] if rest.size else []), rest.size
                if last:
                    break
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(path, f"cannot decode (corrupt or truncated audio): {_short(exc)}") from None
    if pending_n:
        yield np.concatenate(pending) if len(pending) > 1 else pending[0]
    elif not got_any:
        raise AudioError(path, "contains no audio samples")


def pad_to(samples: np.ndarray, n_samples: int) -> np.ndarray:
    """Right-pad with zeros to at least ``n_samples``."""
    if samples.size >= n_samples:
        return samples
    return np.pad(samples, (0, n_samples - samples.size))


class LevelMeter:
    """Running peak and RMS level of samples seen block by block (any shape; every sample counts)."""

    __slots__ = ("peak", "sum_sq", "n")

    def __init__(self) -> None:
        self.peak, self.sum_sq, self.n = 0.0, 0.0, 0

    def update(self, samples: np.ndarray) -> None:
        if samples.size:
            self.peak = max(self.peak, float(np.max(np.abs(samples))))
            self.sum_sq += float(np.square(samples, dtype=np.float64).sum())
            self.n += samples.size

    @property
    def rms_dbfs(self) -> float:
        """RMS level in dBFS (-inf for digital silence or nothing seen)."""
        rms = math.sqrt(self.sum_sq / self.n) if self.n else 0.0
        return 20.0 * math.log10(rms) if rms > 0 else float("-inf")


def peak_and_rms_dbfs(samples: np.ndarray) -> tuple[float, float]:
    """Peak absolute amplitude and RMS level in dBFS (-inf for digital silence)."""
    meter = LevelMeter()
    meter.update(samples)
    return meter.peak, meter.rms_dbfs


def _check_duration(info: AudioInfo, max_duration_s: float | None) -> None:
    if max_duration_s is not None and info.duration_s > max_duration_s:
        raise AudioError(info.path, f"too long: {info.duration_s:.0f} s > max_duration_s={max_duration_s:.0f} s "
                                    "(raise --max-duration-s to accept it)")


def _check_finite(path, samples: np.ndarray) -> None:
    if not np.isfinite(samples).all():
        raise AudioError(path, "contains NaN or infinite samples")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:200]
