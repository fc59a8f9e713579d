"""Similar-sound search: a FAISS index over an embedding store.

>>> from embedtag.search import build_index, load_index
>>> index = build_index("office.store", metric="cosine", preprocess="center")
>>> index.save("office.index")
>>> load_index("office.index").search("cough_01.wav", k=5)   # a vector, a file, a directory or a stored clip id

Modules: :mod:`~embedtag.search.preprocess` (centring, whitening, normalisation), :mod:`~embedtag.search.factory`
(which FAISS index and parameters: ``auto`` is exact up to ``AUTO_FLAT_MAX_CLIPS`` clips, compressed ``ivfpq``
above), :mod:`~embedtag.search.index` (:class:`SimilarityIndex`: add, search, save, load),
:mod:`~embedtag.search.storage` (the versioned files on disk, switched atomically under a lock, checked before
they are read) and :mod:`~embedtag.search.evaluate` (precision@k, mAP@k, recall against exact search).
Retrieval metrics live in :mod:`embedtag.metrics`. Nothing is pickled.
"""

from embedtag.metrics import retrieval_metrics
from embedtag.search.evaluate import (
                                      IndexEvaluation,
                                      evaluate_index,
                                      exact_search,
                                      index_space_from_store,
                                      recall_vs_exact,
)
from embedtag.search.factory import (
                                      AUTO_FLAT_MAX_CLIPS,
                                      IVFPQ_MIN_CLIPS,
                                      KINDS,
                                      MAX_TRAIN_CLIPS,
                                      choose_index,
                                      factory_string,
                                      principal_directions,
                                      projection_dim,
                                      projection_matrix,
                                      refine_index,
)
from embedtag.search.index import (
                                      FORMAT_VERSION,
                                      IndexManifest,
                                      QueryResult,
                                      SimilarityIndex,
                                      add_to_index,
                                      build_index,
                                      index_files,
                                      load_index,
                                      read_manifest,
)
from embedtag.search.preprocess import METRICS, PREPROCESSING, Preprocessor, to_index_space
from embedtag.search.storage import FAISS_NAME, IDS_NAME, MANIFEST_NAME, PREPROCESS_NAME

__all__ = [
    "SimilarityIndex", "QueryResult", "IndexManifest", "build_index", "load_index", "add_to_index", "index_files",
    "read_manifest", "evaluate_index", "IndexEvaluation", "exact_search", "recall_vs_exact",
    "index_space_from_store", "choose_index", "factory_string", "principal_directions", "projection_dim",
    "projection_matrix", "refine_index", "Preprocessor", "to_index_space", "retrieval_metrics",
    "KINDS", "METRICS", "PREPROCESSING", "AUTO_FLAT_MAX_CLIPS", "IVFPQ_MIN_CLIPS", "MAX_TRAIN_CLIPS",
    "FORMAT_VERSION", "MANIFEST_NAME", "FAISS_NAME", "IDS_NAME", "PREPROCESS_NAME",
]
