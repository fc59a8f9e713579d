"""Response bodies of the API, for the OpenAPI document at ``/docs``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable kind, e.g. upload_too_large, not_audio, unknown_clip")
    detail: str = Field(description="what went wrong and what to do, in words")


class Tag(BaseModel):
    label: str
    score: float


class Timeline(BaseModel):
    hop_s: float = Field(description="seconds between the starts of consecutive windows")
    window_s: float = Field(description="length of a window in seconds (the last one may be shorter)")
    labels: list[str] = Field(description="the labels that score highest in any window, best clip score first")
    scores: list[list[float]] = Field(description="scores[i][j]: labels[i] in window j")


class TagResponse(BaseModel):
    duration_s: float
    tags: list[Tag] = Field(description="the best labels of the whole clip, best first")
    labels: list[str] = Field(description="labels at or above their decision threshold")
    timeline: Timeline | None = Field(None, description="present when the audio is longer than one window")


class Neighbour(BaseModel):
    clip_id: str
    score: float = Field(description="similarity (cosine) or distance (l2), as the index measures it")
    labels: list[str]


class SearchResponse(BaseModel):
    results: list[Neighbour] = Field(description="nearest first")


class InfoResponse(BaseModel):
    mode: str = Field(description="head, run or backbone (AudioSet classes)")
    source: str
    backbone: str | None
    weights_sha256: str | None
    device: str | None
    labels: list[str]
    multi_label: bool
    thresholds: list[float]
    window_s: float
    pooling: str
    index: dict | None
    limits: dict
    versions: dict
