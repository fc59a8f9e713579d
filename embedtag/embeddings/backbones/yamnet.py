"""YAMNet through the TF Hub SavedModel (``yamnet``) or the TFLite file (``yamnet-lite``, no TensorFlow).

Both take one 1-D 16 kHz waveform per call; how clips are fed is chosen from what a call costs each of them:

* TensorFlow (``yamnet``): a call costs ~8 ms of fixed overhead on this CPU (a 1 s clip needs ~1 ms of network
  time), so clips are *packed*: laid end to end in one waveform, each starting on the 0.48 s patch grid with enough
  zeros after it that no patch of one clip sees samples of another. The patches a clip gets are then exactly the
  patches it gets alone (the log-mel frames and the network are patch-local), which keeps results batch-invariant
  while removing the per-call overhead; calls stay under ~15 s of audio (``MAX_PACKED_SAMPLES``: larger ones ran
  slower per patch). On CPU the packed calls of a batch run in parallel, one per core, with TensorFlow's ops on
  one thread each: its every-core pool syncs its threads at each of YAMNet's many small ops, so a decoding thread
  beside it stalled the whole pool (600 real clips end to end, 2 cores: 44-50 clips/s with that pool, 58-66 with
  parallel single-threaded calls; model-only 58 and 61). TensorFlow's thread counts are process-wide and fixed once
  it starts, so this applies only where embedtag starts it and its intra-op threads were not set (see
  ``single_threaded_tf_ops``); otherwise calls run one after another on TensorFlow's pool. Its first large calls
  are slow (buffers growing), hence ``warmup``, for large jobs only (``warmup_min_inputs``): on 454 short or 150
  long clips it cost 0.5-1.2 s and saved nothing.
* TFLite (``yamnet-lite``): a call costs well under a millisecond, while packing adds two gap patches per clip
  (tripling the work of a sub-second clip: measured 1.96 s -> 3.06 s of model time on 508 short clips). So each
  clip gets its own call, zero-padded to the length YAMNet pads it to anyway (whole patch hops; identical output)
  and ordered by that length, so an interpreter re-allocates only when the patch count changes. Clips run in
  parallel, one single-threaded interpreter per core: on 200 short clips, 2 cores, that took 1.26-1.45 s against
  1.95-2.13 s for one interpreter with 2 threads (the XNNPACK pool's hand-offs cost more than a 4 ms call gains
  from them); outputs are bit-identical either way. A lone clip gets one interpreter with every core. No warm-up:
  it cost more (0.46 s on 120 s of zeros) than it saved.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence

import numpy as np

from embedtag.embeddings.backbones.base import Backbone, BackboneOutput
from embedtag.embeddings.registry import yamnet_labels
from embedtag.embeddings.weights import resolve
from embedtag.errors import WeightsError

PATCH_SAMPLES = 15600  # 0.96 s patch + one STFT window - hop, YAMNet's minimum input
HOP_SAMPLES = 7680  # 0.48 s patch hop
#: upper bound of one packed call (samples): ~15 s (31 patches). Larger calls ran slower per patch on CPU: packed
#: calls of at most 120 / 60 / 30 / 15 / 10 s embedded 200 short real clips in 2.9 / 2.5 / 2.3 / 2.2 / 2.2 s and
#: 60 long ones in 3.0 / 2.7 / 2.4 / 2.2 / 2.2 s; 6 s calls were slower again (per-call overhead)
MAX_PACKED_SAMPLES = 16000 * 15


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence TensorFlow's C++ start-up chatter (absl logs before TF_CPP_MIN_LOG_LEVEL applies).

    Python exceptions are unaffected; only what native code writes to file descriptor 2 is dropped meanwhile.
    """
    if os.environ.get("EMBEDTAG_TF_VERBOSE"):
        yield
        return
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


#: YAMNet divides by the hop as a float32 multiplication by its reciprocal (a constant in both the SavedModel and
#: the TFLite graph), which lands just above an integer for many exact multiples of the hop: a clip of exactly
#: PATCH_SAMPLES + k * HOP_SAMPLES samples then gets one more (zero-padded) patch. Reproduced here, measured on both.
_INV_HOP_F32 = np.float32(1.0) / np.float32(HOP_SAMPLES)


def n_patches(n_samples: int) -> int:
    """Number of patches YAMNet produces for a waveform of ``n_samples`` (it pads up to whole hops)."""
    after = max(0, n_samples - PATCH_SAMPLES)
    return 1 + int(math.ceil(np.float32(after) * _INV_HOP_F32))


def padded_samples(n_samples: int) -> int:
    """The length YAMNet zero-pads a waveform of ``n_samples`` to (its first patch, then whole hops)."""
    return PATCH_SAMPLES + HOP_SAMPLES * (n_patches(n_samples) - 1)


def _call_length(n_samples: int) -> int:
    """A length to zero-pad a clip to before a call of its own, giving exactly the output of the clip unpadded:
    one sample short of YAMNet's own padded length, since that length itself can earn an extra patch (see
    ``_INV_HOP_F32``). Clips with the same patch count then share a length (no interpreter re-allocation)."""
    target = padded_samples(n_samples) - 1
    return target if target >= n_samples and n_patches(target) == n_patches(n_samples) else n_samples


def pack(waves: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Lay ``waves`` end to end on the patch grid; return the packed waveform and (first patch, n patches)."""
    spans, offset = [], 0
    for w in waves:
        m = n_patches(w.size)
        spans.append((offset // HOP_SAMPLES, m))
        # m patches end at offset + (m-1)*HOP + PATCH; YAMNet's own padding of this clip ends there too, and the
        # next clip starts on the first grid point after it (2 patches straddle the gap and are discarded).
        offset += HOP_SAMPLES * (m + 2)
    packed = np.zeros(offset, np.float32)
    for w, (first, _) in zip(waves, spans):
        start = first * HOP_SAMPLES
        packed[start:start + w.size] = w
    return packed, spans


class _YamnetBase(Backbone):
    family = "yamnet"
    sample_rate = 16000
    embedding_dim = 1024
    min_samples = PATCH_SAMPLES
    default_batch_size = 64
    _warm = False  # set by warmup()
    #: can run on a GPU (TensorFlow with a visible GPU); the TFLite interpreter cannot
    gpu_capable = True

    def __init__(self, spec, weights=None, device="auto", offline=None):
        self.name = spec.name
        self.spec = spec
        self.weights_path = resolve(spec.weights, weights, offline=offline)
        self.class_names = yamnet_labels()
        self.device = "cpu"
        self._check_device(device)

    def _check_device(self, device) -> None:
        """A device this backbone cannot use is an error, not silently the CPU (``--device tpu``, or CUDA for the
        TFLite interpreter)."""
        from embedtag.errors import ParamError

        d = str(device or "auto").lower()
        if not (d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ParamError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")
        if d.startswith("cuda") and not self.gpu_capable:
            raise ParamError(f"{self.name} runs on the CPU only; use --device cpu or auto (yamnet-torch runs on CUDA)")

    def _run(self, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One model call on a 1-D waveform -> (patch scores (P, 521), patch embeddings (P, 1024))."""
        raise NotImplementedError

    def warmup(self) -> None:
        # One call of the largest packed size: on CPU the first ~two minutes of packed calls otherwise ran up to
        # ~20% slower (TensorFlow growing its buffers); a job shorter than that loses more than it gains.
        if not self._warm:
            self._run(np.zeros(MAX_PACKED_SAMPLES, np.float32))
            self._warm = True

    def embed(self, waves: Sequence[np.ndarray], *, return_frames: bool = False) -> BackboneOutput:
        """Clips packed into calls of at most ``MAX_PACKED_SAMPLES``, run in parallel where the ops are
        single-threaded (``YamnetLite`` calls per clip instead)."""
        waves = [np.asarray(w, np.float32) for w in waves]
        emb = np.zeros((len(waves), self.embedding_dim), np.float32)
        scores = np.zeros((len(waves), len(self.class_names)), np.float32)
        frames: list[np.ndarray | None] = [None] * len(waves)
        n = self._n_parallel
        # enough calls for every thread (a small batch, e.g. the pipeline's first, is split), longest first
        need = sum(HOP_SAMPLES * (n_patches(w.size) + 2) for w in waves)
        groups = _groups(waves, min(MAX_PACKED_SAMPLES, -(-need // n)))
        groups.sort(key=lambda g: -sum(waves[i].size for i in g))

        def one(_, j: int) -> None:
            group = groups[j]
            packed, spans = pack([waves[i] for i in group])
            s, e = self._run(packed)
            for i, (first, m) in zip(group, spans):
                emb[i] = e[first:first + m].mean(axis=0)
                scores[i] = s[first:first + m].mean(axis=0)
                if return_frames:
                    frames[i] = e[first:first + m].copy()

        self._in_parallel(len(groups), one)
        return BackboneOutput(emb, scores, frames if return_frames else None)


def _groups(waves: list[np.ndarray], max_samples: int) -> list[list[int]]:
    """Consecutive index groups whose packed length stays under ``max_samples`` (a long clip goes alone)."""
    groups, cur, size = [], [], 0
    for i, w in enumerate(waves):
        need = HOP_SAMPLES * (n_patches(w.size) + 2)
        if cur and size + need > max_samples:
            groups.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += need
    if cur:
        groups.append(cur)
    return groups


class YamnetSavedModel(_YamnetBase):
    """YAMNet from the TF Hub SavedModel directory, through ``tf.saved_model.load`` (what ``tensorflow_hub.load``
    does for a local TF2 SavedModel, without importing tensorflow_hub: ~0.3 s less per process)."""

    #: a job of minutes of model time (the slow first calls are ~2 min; 10,000 clips take several at ~200 clips/s);
    #: measured on 454 short and 150 long clips: the warm-up (0.5-1.2 s) was never recovered
    warmup_min_inputs = 10_000
    #: windows per batch: 32 beat 64 both model-only (57.6 vs 51.0 clips/s on 600 real clips) and end to end
    #: (46.8-49.0 vs 44.6-45.4), measured with calls of at most MAX_PACKED_SAMPLES; re-measured after later
    #: speed-ups, end to end on the same 600 clips, 6 alternating rounds: 32 / 64 / 128 gave medians of 116 / 115
    #: / 117 clips/s, within noise, so the smallest (least memory) stays
    default_batch_size = 32

    def __init__(self, spec, weights=None, device="auto", offline=None):
        super().__init__(spec, weights, device, offline)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import warnings

        path = self.weights_path
        if path.is_file():
            raise WeightsError(f"{path}: the yamnet backbone needs the SavedModel directory (saved_model.pb + "
                               "variables/); for the .tflite file use --model yamnet-lite")
        try:
            with warnings.catch_warnings(), quiet_native_stderr():
                warnings.simplefilter("ignore")  # TensorFlow's import-time deprecation chatter
                import tensorflow as tf

                if not tf.config.list_physical_devices("GPU"):
                    self._n_parallel = single_threaded_tf_ops(tf, self.parallel_slots())
                self._model = tf.saved_model.load(str(path))
        except ImportError:
            raise
        except Exception as exc:
            raise WeightsError(f"{path}: cannot load the YAMNet SavedModel: {str(exc).splitlines()[0][:200]}") from None
        self._tf = tf
        if str(device or "auto").startswith("cuda"):
            if not tf.config.list_physical_devices("GPU"):
                from embedtag.errors import ParamError

                raise ParamError(f"--device {device} asked for, but TensorFlow sees no GPU; use --device cpu or auto")
            self.device = "cuda"
        elif device in (None, "auto") and tf.config.list_physical_devices("GPU"):
            self.device = "cuda"  # TensorFlow places ops on a visible GPU by itself

    def _run(self, waveform):
        scores, embeddings, _ = self._model(self._tf.constant(waveform))
        return scores.numpy(), embeddings.numpy()


def single_threaded_tf_ops(tf, n_calls: int) -> int:
    """How many calls TensorFlow can run in parallel in this process with each op on one thread (1: none).

    Sets TensorFlow's intra-op threads to 1 and its inter-op threads (where the parallel calls' ops run) to
    ``n_calls``, when TensorFlow has not started yet and neither was set: thread counts are process-wide and fixed
    at start, so a user who set them (or started TensorFlow) first keeps theirs. Left at 0, the inter-op pool
    measured slower (51-53 against 59-60 clips/s end to end on 600 clips, 2 cores)."""
    config = tf.config.threading
    intra, inter = config.get_intra_op_parallelism_threads(), config.get_inter_op_parallelism_threads()
    if intra or inter:  # the user's settings
        return max(1, min(n_calls, inter)) if intra == 1 and inter else 1
    try:
        config.set_intra_op_parallelism_threads(1)
        config.set_inter_op_parallelism_threads(n_calls)
    except RuntimeError:  # TensorFlow has started, with its every-core pool
        return 1
    return n_calls


class _LiteCall:
    """One TFLite interpreter and what a call on it needs; used by one thread at a time."""

    def __init__(self, interpreter_cls, path, num_threads: int):
        self.interp = interpreter_cls(model_path=str(path), num_threads=num_threads)
        outs = {tuple(d["shape"])[-1]: d["index"] for d in self.interp.get_output_details()}
        try:
            self.scores_idx, self.emb_idx = outs[521], outs[1024]
        except KeyError:
            raise WeightsError(f"{path}: not a YAMNet TFLite model (outputs {sorted(outs)}, "
                               "expected 521 and 1024)") from None
        self.input_idx = self.interp.get_input_details()[0]["index"]
        self.allocated = -1
        self.quiet_first_call = True

    def __call__(self, waveform):
        if self.allocated != waveform.size:  # re-allocating costs a few ms; skip when the size repeats
            self.interp.resize_tensor_input(self.input_idx, [waveform.size], strict=False)
            self.interp.allocate_tensors()
            self.allocated = waveform.size
        self.interp.set_tensor(self.input_idx, waveform)
        if self.quiet_first_call:  # the XNNPACK delegate announces itself on stderr at the first invoke
            with quiet_native_stderr():
                self.interp.invoke()
            self.quiet_first_call = False
        else:
            self.interp.invoke()
        return self.interp.get_tensor(self.scores_idx).copy(), self.interp.get_tensor(self.emb_idx).copy()


class YamnetLite(_YamnetBase):
    """YAMNet via the TFLite file and ai-edge-litert (falls back to tf.lite when only TensorFlow is there)."""

    gpu_capable = False

    def warmup(self) -> None:
        pass

    def __init__(self, spec, weights=None, device="auto", offline=None):
        super().__init__(spec, weights, device, offline)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            try:
                from tensorflow.lite import Interpreter  # type: ignore[no-redef]
            except ImportError:
                raise ImportError("ai_edge_litert", name="ai-edge-litert") from None
        path = self.weights_path
        if path.is_dir():
            path = path / "yamnet.tflite"
        self._interpreter_cls, self._path = Interpreter, path
        self._n_parallel = self.parallel_slots()
        # a call per clip: small first batches cost nothing and let the model start while decoding goes on
        self.first_batch_size = 2 * self._n_parallel
        # a batch runs on single-threaded interpreters (made on first use); a lone clip on one with every core
        self._pool: list[_LiteCall] = []
        self._solo = self._load(self._n_parallel)

    def _load(self, num_threads: int) -> _LiteCall:
        try:
            return _LiteCall(self._interpreter_cls, self._path, num_threads)
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(f"{self._path}: cannot load the YAMNet TFLite model: "
                               f"{str(exc).splitlines()[0][:200]}") from None

    def _run(self, waveform):
        return self._solo(waveform)

    def embed(self, waves: Sequence[np.ndarray], *, return_frames: bool = False) -> BackboneOutput:
        """One call per clip (packing's gap patches would cost more, see the module docstring): a lone clip in
        this thread on the every-core interpreter, a batch on the single-threaded ones in parallel."""
        waves = [np.asarray(w, np.float32) for w in waves]
        parallel = len(waves) > 1 and self._n_parallel > 1
        if parallel and not self._pool:
            pool = [self._load(1) for _ in range(self._n_parallel)]
            with quiet_native_stderr():  # here, not in the threads: redirecting fd 2 is process-wide
                for call in pool:
                    call(np.zeros(PATCH_SAMPLES - 1, np.float32))  # the XNNPACK delegate's start-up line
                    call.quiet_first_call = False
            self._pool = pool
        emb = np.zeros((len(waves), self.embedding_dim), np.float32)
        scores = np.zeros((len(waves), len(self.class_names)), np.float32)
        frames: list[np.ndarray | None] = [None] * len(waves)
        # longest first (the last calls are short, so no thread waits long for another); equal patch counts stay
        # together, so each interpreter seldom re-allocates
        order = sorted(range(len(waves)), key=lambda i: -n_patches(waves[i].size))

        def one(call: _LiteCall, j: int) -> None:
            i = order[j]
            w = waves[i]
            s, e = call(np.pad(w, (0, _call_length(w.size) - w.size)))
            emb[i], scores[i] = e.mean(axis=0), s.mean(axis=0)
            if return_frames:
                frames[i] = e

        self._in_parallel(len(waves), one, self._pool if parallel else [self._solo])
        return BackboneOutput(emb, scores, frames if return_frames else None)
