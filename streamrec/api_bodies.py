"""The JSON bodies of the HTTP API (pydantic models; the OpenAPI schema is built from them).

The query bodies are those of ../shared/DESIGN.md, built by
:class:`~streamrec.queries.QueryService` and checked against these models by the tests.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

NO_VERSION = "no embedding version is active yet: run `streamrec retrain` (or POST /retrain)"


# ------------------------------------------------------------------ bodies
class ScoredItem(BaseModel):
    item_id: str
    score: float


class Recommendations(BaseModel):
    user_id: str
    items: list[ScoredItem]
    fallback: bool = Field(description="true: unknown user, recent popularity instead")
    version: str


class SimilarItems(BaseModel):
    item_id: str
    items: list[ScoredItem] = Field(description="nearest items, never the item itself")


class Embedding(BaseModel):
    id: str
    kind: Literal["user", "item"]
    vector: list[float]
    version: str
    source: Literal["base", "overlay"] = Field(
        description="overlay: refreshed by the incremental updater since the base version")
    updated_at: float = Field(description="epoch seconds of the vector's newest event")
    source: Literal["base", "overlay"]
    updated_at: float = Field(description="epoch seconds")


class Version(BaseModel):
    id: int
    name: str
    model: str
    status: str
    cutoff: float
    dim: int
    num_users: int
    num_items: int
    created_at: float
    activated_at: float | None
    pruned: bool
    hyper_parameters: dict[str, Any]
    metrics: dict[str, Any]
    has_updater_state: bool


class Freshness(BaseModel):
    newest_overlay_at: float | None = Field(description="epoch s of the newest overlay row")
    overlay_age_s: float | None = Field(description="now - newest_overlay_at")
    active_version_age_s: float | None = Field(description="now - activation time")
    cutoff_age_s: float | None = Field(description="now - the active version's cutoff")


class Versions(BaseModel):
    active: str | None
    served: str | None = Field(description="the version the API answers from right now")
    overlay_size: int
    freshness: Freshness
    versions: list[Version]


class RetrainRequest(BaseModel):
    model: str = Field(description="lightgcn, pinsage, mf or popularity")
    epochs: int | None = Field(None, ge=1, le=10_000)
    dim: int | None = Field(None, ge=1, le=4096)
    cutoff: float | str | None = Field(None, description="epoch seconds or ISO-8601")


class RetrainJob(BaseModel):
    job_id: str
    model: str
    status: Literal["running", "succeeded", "failed"]
    submitted_at: float
    finished_at: float | None = None
    version: str | None = None
    error: str | None = None


class Health(BaseModel):
    status: Literal["ok", "no_active_version"]
    served: str | None


class Error(BaseModel):
    detail: str
