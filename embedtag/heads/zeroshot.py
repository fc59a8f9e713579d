"""Zero-shot baseline: score a label vocabulary straight from a backbone's AudioSet outputs, with no training.

Each label is mapped to AudioSet / YAMNet class names, in this order:

1. the normalised name (case, punctuation, ``_`` and the words and/or/the dropped; FSDKaggle2019's
   ``Accelerating_and_revving_and_vroom`` equals AudioSet's ``Accelerating, revving, vroom``),
2. an explicit synonym table (``SYNONYMS``, small, for names the ontology spells otherwise; an empty entry marks
   a label deliberately left unmapped),
3. word containment: every word of the label occurs in the class name (``drawer`` -> ``Drawer open or close``).

A label's score is the maximum AudioSet score of its classes; labels left unmapped score 0 (ranked last), and
:func:`map_labels` reports them so a caller can say how much of the vocabulary the baseline covers.
"""

from __future__ import annotations

import re

import numpy as np

from embedtag.errors import DataError

_STOP = {"and", "or", "the", "a", "of", "with"}

#: label (normalised, no spaces) -> AudioSet display names. Only for names the rules below cannot match.
SYNONYMS: dict[str, list[str]] = {
    # DCASE 2016 task 2 office events
    "clearthroat": ["Throat clearing"],
    "doorslam": ["Slam", "Door"],
    "keysdrop": ["Keys jangling"],
    "pageturn": ["Rustle", "Crumpling, crinkling"],
    "phone": ["Telephone", "Telephone bell ringing", "Ringtone"],
    "keyboard": ["Computer keyboard", "Typing"],
    # glass break, baby cry, oddball sounds, music sample families
    "glassbreak": ["Shatter", "Glass"],
    "babycry": ["Baby cry, infant cry"],
    "musicinstrument": ["Musical instrument"],
    "humanbodynoise": ["Burping, eructation", "Hiccup", "Stomach rumble", "Fart", "Breathing", "Cough", "Sneeze"],
    "kick": ["Bass drum"],
    "snare": ["Snare drum"],
    "bass": ["Bass guitar", "Double bass"],
    "electronic": ["Electronic music", "Electronica"],
    "ambient": ["Ambient music"],
    "tom": ["Drum"],
    "vinyl": ["Scratching (performance technique)"],
    "background": [],  # not "Background music"
    # FSDKaggle2019 labels that YAMNet's 521 classes merge (AudioSet's 527 have them, matched by name first)
    "femalesinging": ["Singing"],
    "malesinging": ["Singing"],
    "femalespeechwomanspeaking": ["Speech"],
    "malespeechmanspeaking": ["Speech"],
}


def _norm(name: str) -> list[str]:
    words = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
    return [w for w in words if w not in _STOP]


def map_labels(vocabulary: list[str], class_names: list[str],
               synonyms: dict[str, list[str]] | None = None) -> dict[str, list[int]]:
    """label -> indices into ``class_names`` (empty list when unmapped)."""
    synonyms = SYNONYMS if synonyms is None else synonyms
    by_norm: dict[tuple, list[int]] = {}
    by_name: dict[str, int] = {}
    for i, c in enumerate(class_names):
        by_norm.setdefault(tuple(_norm(c)), []).append(i)
        by_name[c] = i
    class_words = [set(_norm(c)) for c in class_names]
    out: dict[str, list[int]] = {}
    for label in vocabulary:
        words = _norm(label)
        key = "".join(words)
        exact = by_norm.get(tuple(words))
        if exact:
            out[label] = list(exact)
            continue
        if key in synonyms:
            out[label] = [by_name[n] for n in synonyms[key] if n in by_name]
            if out[label] or not synonyms[key]:
                continue
        contained = [i for i, cw in enumerate(class_words) if words and set(words) <= cw]
        out[label] = contained
    return out


def zero_shot_scores(audioset_scores: np.ndarray, vocabulary: list[str], class_names: list[str],
                     synonyms: dict[str, list[str]] | None = None) -> np.ndarray:
    """(n_clips, n_labels) scores: per label, the max AudioSet score over its mapped classes (0 if unmapped)."""
    audioset_scores = np.asarray(audioset_scores, np.float32)
    if audioset_scores.ndim != 2 or audioset_scores.shape[1] != len(class_names):
        raise DataError(f"AudioSet scores of shape {audioset_scores.shape} do not match {len(class_names)} classes")
    mapping = map_labels(vocabulary, class_names, synonyms)
    out = np.zeros((len(audioset_scores), len(vocabulary)), np.float32)
    for j, label in enumerate(vocabulary):
        if mapping[label]:
            out[:, j] = audioset_scores[:, mapping[label]].max(1)
    return out


def zero_shot_store(store, vocabulary: list[str], synonyms=None) -> tuple[np.ndarray, dict[str, list[str]]]:
    """Zero-shot scores for every clip of ``store`` (which must keep AudioSet scores), and the mapping used
    (label -> class names)."""
    scores = store.scores()
    if scores is None:
        raise DataError(f"store {store.path} keeps no AudioSet scores: the zero-shot baseline needs them "
                        "(extract with scores kept)")
    names = store.manifest.class_names
    mapping = map_labels(vocabulary, names, synonyms)
    return (zero_shot_scores(scores, vocabulary, names, synonyms),
            {lab: [names[i] for i in idx] for lab, idx in mapping.items()})
