"""embedtag: transfer learning on audio.

Audio -> AudioSet-pretrained backbone -> embedding store -> heads / similarity index -> predictions and reports.

The top-level names are imported lazily so that ``import embedtag`` stays fast and never loads
TensorFlow or PyTorch (nor touches the network).
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "encode": ("embedtag.embeddings.pipeline", "encode"),
    "extract": ("embedtag.embeddings.pipeline", "extract"),
    "load_backbone": ("embedtag.embeddings.registry", "load_backbone"),
    "list_backbones": ("embedtag.embeddings.registry", "list_backbones"),
    "EmbeddingStore": ("embedtag.store", "EmbeddingStore"),
    "open_store": ("embedtag.store", "open_store"),
    "load_audio": ("embedtag.embeddings.audio", "load_audio"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'embedtag' has no attribute {name!r}")
