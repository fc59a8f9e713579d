"""Backbones by name: what exists, what its weights are, and loading one.

``list_backbones()`` is cheap (no model import); ``load_backbone(name)`` imports the framework it needs.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from functools import cache

from embedtag.embeddings.weights import WeightFile, find
from embedtag.errors import EmbedtagError

ZENODO_PANNS = "https://zenodo.org/record/3987831/files/"
EFFICIENTAT_RELEASE = "https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/"

#: The backbone used when none is named (extract, encode, `embedtag extract`, `make demo`). EfficientAT mn04 beats
#: YAMNet on every real set of benchmarks/README.md (benchmark_reports, best-head lwlrap: dcase 0.984 vs 0.942,
#: sonicpi 0.785 vs 0.746, goldlab 0.631 vs 0.593, glass 0.996 vs 0.989, donateacry 0.960 vs 0.957), needs only
#: PyTorch, and uses half the memory (peak RSS ~0.6 GiB vs ~1.4 GiB).
DEFAULT_MODEL = "efficientat-mn04"

# sha256 of the files of the TF Hub google/yamnet/1 module, checked after unpacking the download.
_YAMNET_FILES = {
    "saved_model.pb": "5ccd21065394c76cc843ed78fd4809f23959c227c02eacdee9520d95dc3070db",
    "variables/variables.data-00000-of-00001": "6ac2e57a8feb68ba9fbc93248ed2d7f2ec8940a95de07a5131d1bc39c6ffbe31",
    "variables/variables.index": "c9bc1a49cb27698c69d7d603187938a83c389b7d5e5fcdec1771153d20eb2562",
}


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str
    #: "module:Class" of the implementation
    impl: str
    embedding_dim: int
    sample_rate: int
    n_classes: int
    weights: WeightFile
    description: str
    #: pip extra that provides the framework
    extra: str
    options: dict = field(default_factory=dict)
    #: (module, backbone): when ``module`` cannot be imported, ``load_backbone`` builds ``backbone`` instead
    fallback: tuple[str, str] | None = None
    #: backbones whose weight files this one converts its own from (then those count as present)
    converted_from: tuple[str, ...] = ()

    def weights_present(self) -> bool:
        return find(self.weights) is not None or any(get_spec(n).weights_present() for n in self.converted_from)


_SPECS: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone (third-party code may register its own)."""
    _SPECS[spec.name] = spec
    return spec


register(BackboneSpec(
    name="panns-cnn14", family="panns", impl="embedtag.embeddings.backbones.panns:PannsBackbone",
    embedding_dim=2048, sample_rate=32000, n_classes=527,
    weights=WeightFile("panns", "Cnn14_mAP=0.431.pth", ZENODO_PANNS + "Cnn14_mAP%3D0.431.pth?download=1",
                       checksum="md5:541141fa2ee191a88f24a3219fff024e"),
    description="PANNs Cnn14 (AudioSet mAP 0.431), 32 kHz log-mel CNN", extra="panns",
    options={"arch": "Cnn14"}))
register(BackboneSpec(
    name="panns-cnn14-dlm", family="panns", impl="embedtag.embeddings.backbones.panns:PannsBackbone",
    embedding_dim=2048, sample_rate=32000, n_classes=527,
    weights=WeightFile("panns", "Cnn14_DecisionLevelMax_mAP=0.385.pth",
                       ZENODO_PANNS + "Cnn14_DecisionLevelMax_mAP%3D0.385.pth?download=1"),
    description="PANNs Cnn14_DecisionLevelMax (mAP 0.385), frame-wise outputs", extra="panns",
    options={"arch": "Cnn14_DecisionLevelMax"}))
register(BackboneSpec(
    name="yamnet", family="yamnet", impl="embedtag.embeddings.backbones.yamnet:YamnetSavedModel",
    embedding_dim=1024, sample_rate=16000, n_classes=521,
    weights=WeightFile("yamnet", "saved_model", "https://tfhub.dev/google/yamnet/1?tf-hub-format=compressed",
                       archive="tar.gz", files_sha256=_YAMNET_FILES),
    description="YAMNet (TF Hub SavedModel), 16 kHz MobileNet-v1, 0.96 s patches", extra="yamnet",
    fallback=("tensorflow", "yamnet-torch")))  # the same network without TensorFlow (patch cosine > 0.9999)
register(BackboneSpec(
    name="yamnet-lite", family="yamnet", impl="embedtag.embeddings.backbones.yamnet:YamnetLite",
    embedding_dim=1024, sample_rate=16000, n_classes=521,
    weights=WeightFile("yamnet", "yamnet.tflite",
                       "https://tfhub.dev/google/lite-model/yamnet/tflite/1?lite-format=tflite"),
    description="YAMNet as a TFLite file (ai-edge-litert; no TensorFlow needed)", extra="lite"))
register(BackboneSpec(
    name="yamnet-torch", family="yamnet", impl="embedtag.embeddings.backbones.yamnet_torch:YamnetTorch",
    embedding_dim=1024, sample_rate=16000, n_classes=521,
    # converted once (into the cache) from the SavedModel or TFLite file the user has; never downloaded itself
    weights=WeightFile("yamnet", "yamnet_torch.safetensors",
                       "https://tfhub.dev/google/lite-model/yamnet/tflite/1?lite-format=tflite"),
    description="YAMNet in PyTorch (converted from the SavedModel or TFLite file), batched, CPU or CUDA",
    extra="all", converted_from=("yamnet", "yamnet-lite")))
register(BackboneSpec(
    name="efficientat-mn04", family="efficientat", impl="embedtag.embeddings.backbones.efficientat:EfficientATBackbone",
    embedding_dim=384, sample_rate=32000, n_classes=527,
    weights=WeightFile("efficientat", "mn04_as_mAP_432.pt",
                       EFFICIENTAT_RELEASE + "mn04_as_mAP_432.pt",
                       checksum="sha256:899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c"),
    description="EfficientAT mn04_as (AudioSet mAP 0.432), 32 kHz MobileNetV3 width 0.4, ~1M parameters",
    extra="all", options={"width_mult": 0.4}))
# EfficientAT publishes no checksums for its release files and none could be found from a trustworthy source, so
# mn10/mn40 downloads are verified by loadability only: the file must load with weights_only=True and match the
# width's architecture strictly (every key and shape), which a truncated or foreign file cannot.
register(BackboneSpec(
    name="efficientat-mn10", family="efficientat", impl="embedtag.embeddings.backbones.efficientat:EfficientATBackbone",
    embedding_dim=960, sample_rate=32000, n_classes=527,
    weights=WeightFile("efficientat", "mn10_as_mAP_471.pt", EFFICIENTAT_RELEASE + "mn10_as_mAP_471.pt"),
    description="EfficientAT mn10_as (AudioSet mAP 0.471), 32 kHz MobileNetV3 width 1.0, 4.9M parameters",
    extra="all", options={"width_mult": 1.0}))
register(BackboneSpec(
    name="efficientat-mn40", family="efficientat", impl="embedtag.embeddings.backbones.efficientat:EfficientATBackbone",
    embedding_dim=3840, sample_rate=32000, n_classes=527,
    weights=WeightFile("efficientat", "mn40_as_mAP_484.pt", EFFICIENTAT_RELEASE + "mn40_as_mAP_484.pt"),
    description="EfficientAT mn40_as (AudioSet mAP 0.484), 32 kHz MobileNetV3 width 4.0, 68M parameters",
    extra="all", options={"width_mult": 4.0, "batch_size": 8}))
# The dynamic MobileNets (efficientat_dymn.py): upstream's default *_as files (its get_model names; dymn20_as is
# the mAP 0.493 file). No checksums are published for them either, so as for mn10/mn40 a download is verified by
# loadability: weights_only=True and a strict match of every key and shape of the width's architecture.
register(BackboneSpec(
    name="efficientat-dymn04", family="efficientat",
    impl="embedtag.embeddings.backbones.efficientat_dymn:DyMNBackbone",
    embedding_dim=384, sample_rate=32000, n_classes=527,
    weights=WeightFile("efficientat", "dymn04_as.pt", EFFICIENTAT_RELEASE + "dymn04_as.pt"),
    description="EfficientAT dymn04_as (AudioSet mAP 0.450), 32 kHz dynamic MobileNet width 0.4, 2.0M parameters",
    extra="all", options={"width_mult": 0.4}))
register(BackboneSpec(
    name="efficientat-dymn10", family="efficientat",
    impl="embedtag.embeddings.backbones.efficientat_dymn:DyMNBackbone",
    embedding_dim=960, sample_rate=32000, n_classes=527,
    weights=WeightFile("efficientat", "dymn10_as.pt", EFFICIENTAT_RELEASE + "dymn10_as.pt"),
    description="EfficientAT dymn10_as (AudioSet mAP 0.477), 32 kHz dynamic MobileNet width 1.0, 10.5M parameters",
    extra="all", options={"width_mult": 1.0}))
register(BackboneSpec(
    name="efficientat-dymn20", family="efficientat",
    impl="embedtag.embeddings.backbones.efficientat_dymn:DyMNBackbone",
    embedding_dim=1920, sample_rate=32000, n_classes=527,
    weights=WeightFile("efficientat", "dymn20_as_mAP_493.pt", EFFICIENTAT_RELEASE + "dymn20_as_mAP_493.pt"),
    description="EfficientAT dymn20_as (AudioSet mAP 0.493), 32 kHz dynamic MobileNet width 2.0, 40M parameters",
    # per 10 s window about half mn40's activations (half its width), hence twice mn40's batch
    extra="all", options={"width_mult": 2.0, "batch_size": 16}))


def list_backbones() -> list[BackboneSpec]:
    """Every registered backbone's spec (name, embedding_dim, sample_rate, n_classes, weights, description)."""
    return list(_SPECS.values())


def get_spec(name: str) -> BackboneSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise EmbedtagError(f"unknown backbone {name!r}; available: {', '.join(_SPECS)}") from None


def load_backbone(name: str, *, weights: str | os.PathLike | None = None, device: str | None = "auto",
                  offline: bool | None = None):
    """Build backbone ``name`` with its weights resolved (see ``embedtag.embeddings.weights``).

    A backbone whose framework is missing is replaced by its registered fallback (``yamnet`` without TensorFlow
    loads ``yamnet-torch``, whose name the store then records)."""
    spec = get_spec(name)
    if spec.fallback and importlib.util.find_spec(spec.fallback[0]) is None:
        spec = get_spec(spec.fallback[1])
    module_name, _, cls_name = spec.impl.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EmbedtagError(f"backbone {name!r} needs an optional dependency ({exc.name or exc}); "
                            f"install it with: pip install 'embedtag[{spec.extra}]'") from None
    return getattr(module, cls_name)(spec, weights=weights, device=device, offline=offline)


@cache
def _read_class_csv(filename: str) -> tuple[str, ...]:
    from importlib import resources  # here: `embedtag --help` imports this module and never reads the CSVs

    with resources.files("embedtag.embeddings").joinpath("data", filename).open(encoding="utf-8") as f:
        return tuple(row["display_name"] for row in csv.DictReader(f))


def audioset_labels() -> list[str]:
    """The 527 AudioSet class names in model output order (shipped with the package; no download)."""
    return list(_read_class_csv("audioset_labels.csv"))


def yamnet_labels() -> list[str]:
    """YAMNet's 521 class names in output order."""
    return list(_read_class_csv("yamnet_class_map.csv"))
