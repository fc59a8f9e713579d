"""Labelled audio datasets — kept for compatibility: everything here lives in :mod:`embedtag.inputs`, the one
owner of inputs (audio extensions, folder walking, label tables, dataset layouts, clip matching)."""

from __future__ import annotations

from embedtag.inputs import (
    AUDIO_EXTENSIONS,
    SUBSETS,
    Dataset,
    load_dataset,
    read_audio_folder,
    read_esc50,
    read_folder,
    read_folder_per_class,
    read_fsdkaggle2019,
    read_labels_csv,
    split_labels,
    to_multi_hot,
)

__all__ = ["Dataset", "load_dataset", "read_fsdkaggle2019", "read_labels_csv", "read_folder", "read_esc50",
           "read_folder_per_class", "read_audio_folder", "to_multi_hot", "split_labels", "AUDIO_EXTENSIONS",
           "SUBSETS"]
