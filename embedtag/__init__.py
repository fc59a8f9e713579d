"""embedtag: transfer learning on audio.

Audio -> AudioSet-pretrained backbone -> embedding store -> heads / similarity index -> predictions and reports::

    import embedtag

    store = embedtag.extract("data/office", "stores/office", model="efficientat-mn04")   # or embedtag.encode(files)
    head, report = embedtag.fit_head(store.path, head="logreg", folds=5)               # a scikit-learn style head
    probs = embedtag.predict_files(head, ["new.wav"])                                   # DataFrame: fname + labels
    index = embedtag.build_index(store.path)                                            # FAISS similarity index
    neighbours = index.search(["new.wav"], 5)

The names in ``__all__`` are the public API; ``dir(embedtag)`` lists them and ``help(embedtag.NAME)`` shows each
one's documentation. They are imported lazily, on first use, so that ``import embedtag`` stays fast and never
loads TensorFlow, PyTorch, pandas or FAISS (nor touches the network).

Fine-tuning is the subpackage :mod:`embedtag.finetune` (``from embedtag.finetune import finetune``): a package
attribute named like a subpackage is always the subpackage once it is imported, so ``embedtag.finetune`` is the
module, not the function.
"""

from __future__ import annotations

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None: the module itself.
_LAZY: dict[str, tuple[str, str | None]] = {
    # audio -> embeddings
    "encode": ("embedtag.embeddings.pipeline", "encode"),
    "extract": ("embedtag.embeddings.pipeline", "extract"),
    "load_audio": ("embedtag.embeddings.audio", "load_audio"),
    "list_backbones": ("embedtag.embeddings.registry", "list_backbones"),
    "load_backbone": ("embedtag.embeddings.registry", "load_backbone"),
    # the embedding store
    "open_store": ("embedtag.store", "open_store"),
    "EmbeddingStore": ("embedtag.store", "EmbeddingStore"),
    # inputs
    "load_dataset": ("embedtag.inputs", "load_dataset"),
    "resolve_sources": ("embedtag.inputs", "resolve_sources"),
    "split_dataset": ("embedtag.inputs", "split_dataset"),
    # heads and predictions
    "fit_head": ("embedtag.heads", "fit_head"),
    "make_head": ("embedtag.heads", "make_head"),
    "load_head": ("embedtag.heads", "load_head"),
    "load_predictor": ("embedtag.artifacts", "load_predictor"),
    "predict_store": ("embedtag.heads", "predict_store"),
    "predict_files": ("embedtag.heads", "predict_files"),
    "evaluate_head": ("embedtag.heads", "evaluate_head"),
    "lwlrap": ("embedtag.metrics", "lwlrap"),
    # tagging over time
    "predict_frames": ("embedtag.frames", "predict_frames"),
    "tag_clip": ("embedtag.frames", "tag_clip"),
    # similar-sound search
    "build_index": ("embedtag.search", "build_index"),
    "SimilarityIndex": ("embedtag.search", "SimilarityIndex"),
    "evaluate_index": ("embedtag.search", "evaluate_index"),
    "load_index": ("embedtag.search", "load_index"),
    # fine-tuning (the subpackage; see the module docstring)
    "finetune": ("embedtag.finetune", None),
    "load_finetuned": ("embedtag.finetune", "load_finetuned"),
    # errors: every error embedtag raises on purpose is an EmbedtagError
    **{name: ("embedtag.errors", name) for name in (
        "EmbedtagError", "AudioError", "WeightsError", "ArtifactError", "StoreError", "WrongKindError",
        "IncompatibleError", "DataError", "ParamError")},
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'embedtag' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    if attr is None:
        return module
    value = getattr(module, attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
