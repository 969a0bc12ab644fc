"""The request bodies the HTTP service publishes (its OpenAPI schema) and the wording of
their validation errors.

The schema says what the service accepts, as far as a schema can: ids are never empty, a
query holds a character that is not white space, a rec history entry has no query, an
integer may be written as ``3`` or ``3.0`` (JSON Schema's integers), a retriever is named
among the service's own, and a full-catalogue request gives what its retriever needs (a user
or a history). What no schema can say — which item and user ids the catalogue holds — is
checked against the catalogue and refused with ``422 unknown_item`` / ``unknown_user``.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from gensr.serve.ranker import Ranker


def _integral(value: Any) -> Any:
    """``3.0`` -> ``3`` (JSON Schema counts it an integer); anything else unchanged."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


#: an original item id as the schema publishes it: never empty (an empty id names no item)
ITEM_ID_SCHEMA = {"type": "string", "minLength": 1}
#: a query holds at least one character that is not white space
NOT_BLANK = r"\S"


def count(ge: int = 1, le: int | None = None) -> Any:
    """An integer in [ge, le], also when written ``3.0``; never a bool or a string (the
    models are strict). The bounds are part of the type, so that the schema shows them as
    ``minimum``/``maximum`` inside an ``anyOf`` too."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_integral)]


@functools.cache
def history_entry_model(max_query_chars: int) -> type[BaseModel]:
    """The schema of one history entry (every request body's ``history`` list): one class
    per query-length limit, so that every route of an app shares it."""

    class HistoryEntry(BaseModel):
        """One past interaction, oldest first in the list."""

        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
            # what the validator below says, for clients: a rec interaction has no query
            "if": {"properties": {"behaviour": {"const": "rec"}}},
            "then": {"properties": {"query": {"type": "null"}}}})
        item: str = Field(min_length=1, max_length=256,
                          description="Original item id (orig_id).")
        behaviour: Literal["rec", "src"] = Field(
            "rec", description="rec = recommended/consumed, src = clicked from a search.")
        query: str | None = Field(None, min_length=1, max_length=max_query_chars,
                                  pattern=NOT_BLANK,
                                  description="The search query (src interactions only).")

        @model_validator(mode="after")
        def _rec_has_no_query(self) -> Any:
            if self.behaviour == "rec" and self.query is not None:
                raise ValueError("a rec interaction has no query")
            return self

    return HistoryEntry


def rank_body(ranker: Ranker) -> type[BaseModel]:
    """The request body schema, with this service's limits and catalogue examples."""
    lim = ranker.limits
    HistoryEntry = history_entry_model(lim.max_query_chars)

    items = ranker.example_items(5)
    queries = ranker.data.query_text[1:2]
    example: dict[str, Any] = {
        "history": [{"item": items[0], "behaviour": "rec"}]
        + ([{"item": items[1], "behaviour": "src", "query": queries[0]}] if queries else []),
        "candidates": items[2:5] or items[:1],
        "top_k": 2,
    }
    if "src" in ranker.tasks and queries:
        example["query"] = queries[0]
    elif "rec" not in ranker.tasks:  # pragma: no cover - a search model without queries
        example["query"] = "example query"

    class RankBody(BaseModel):
        """A ranking request: search when ``query`` is given, else recommendation."""

        model_config = ConfigDict(extra="forbid", strict=True,
                                  json_schema_extra={"examples": [example]})
        history: list[HistoryEntry] = Field(
            default_factory=list, max_length=lim.max_history,
            description=f"The user's interactions, oldest first; the last "
                        f"{ranker.max_his_len} are used.")
        candidates: list[str] = Field(
            min_length=1, max_length=lim.max_candidates,
            # published, and enforced by the catalogue check (an empty id is unknown_item)
            json_schema_extra={"uniqueItems": True, "items": ITEM_ID_SCHEMA},
            description="Original item ids to rank, each once.")
        query: str | None = Field(None, min_length=1, max_length=lim.max_query_chars,
                                  pattern=NOT_BLANK,
                                  description="Search query text; leave out to recommend.")
        top_k: count() | None = Field(None, description="Return only the best k.")  # type: ignore[valid-type]
        user: str | None = Field(
            None, min_length=1, max_length=256,
            description="Original user id. Required by models that read user ids "
                        f"({'this one does' if ranker.model.reads_user_ids else 'not this one'}"
                        "); ignored by the others.")

    return RankBody


def field_name(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def wording(error: dict[str, Any], where: str) -> str:
    """A clearer wording of pydantic's messages for the cases users meet most."""
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if where == "body" and kind == "missing":
        return "the request body is missing: send a JSON object"
    if where == "body" and kind in ("model_attributes_type", "model_type", "dict_type"):
        return "the request body must be a JSON object"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required"
    if where == "candidates" and kind == "too_short":
        return "empty: give at least one item to rank"
    if where == "candidates" and kind == "too_long":
        return f"too many candidates (at most {ctx.get('max_length')})"
    if kind == "string_too_long":
        return f"too long (at most {ctx.get('max_length')} characters)"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NOT_BLANK:
        return "is empty: leave it out (null) for recommendation"
    if kind == "literal_error" and where == "retriever":
        return (f"no retriever {error.get('input')!r} here; this service has "
                f"{ctx.get('expected', 'none')}")
    if kind == "value_error":
        return str(ctx.get("error") or error.get("msg", "invalid"))
    return str(error.get("msg", "invalid"))


def _names_type(names: list[str]) -> Any:
    """The schema of a retriever name: one of ``names`` (the service's retrievers for the
    task), or any non-empty name when it has none (then every request names no retriever)."""
    if names:
        return Literal[tuple(names)]  # type: ignore[valid-type]
    return Annotated[str, Field(min_length=1, max_length=256)]


def full_bodies(ranker: Ranker) -> tuple[type[BaseModel], type[BaseModel]]:
    """The bodies of /v1/recommend and /v1/search, with this service's limits."""
    from gensr.serve.full import DEFAULT_TOP_K

    lim = ranker.limits
    rec_names = ranker.retrievers.names("rec")
    src_names = ranker.retrievers.names("src")

    FullHistoryEntry = history_entry_model(lim.max_query_chars)

    items = ranker.example_items(2)
    users = [u for u in ranker.data.user_orig_id[1:2] if u]
    queries = ranker.data.query_text[1:2]
    rec_example: dict[str, Any] = {"history": [{"item": i} for i in items], "top_k": 5}
    if users:
        rec_example["user"] = users[0]
    src_example = {**rec_example, "query": queries[0] if queries else "example query"}

    def fields(names: list[str]) -> dict[str, Any]:
        return dict(
            history=(list[FullHistoryEntry], Field(
                default_factory=list, max_length=lim.max_history,
                description="The user's interactions, oldest first; the retriever and the "
                            "reranker each read their own number of the most recent.")),
            user=(str | None, Field(
                None, min_length=1, max_length=256,
                description="Original user id: needed by models/retrievers that read user "
                            "ids; lightgcn uses the user's vector when given, else the "
                            "history's mean item vector.")),
            top_k=(count(1, lim.max_candidates), Field(
                DEFAULT_TOP_K, description="Items to return: the best top_k of the rerank_n "
                                           "retrieved (all of them when top_k > rerank_n).")),
            rerank_n=(count(1, lim.max_candidates) | None, Field(
                None,
                description=f"Items to retrieve and rerank (default {ranker.rerank_n}).")),
            retriever=(_names_type(names) | None, Field(
                None, description=f"Retriever name (default: the first of "
                                  f"{names or 'none'}).")),
            keep_consumed=(bool, Field(
                False, description="Keep the history's items eligible (default: excluded).")),
        )

    from pydantic import create_model

    def extra(task: str, names: list[str], example: dict[str, Any]) -> dict[str, Any]:
        rules = retriever_rules(ranker, task, names)
        return {"examples": [example], **({"allOf": rules} if rules else {})}

    recommend = create_model(
        "RecommendBody", __config__=ConfigDict(
            extra="forbid", strict=True, json_schema_extra=extra("rec", rec_names, rec_example)),
        **fields(rec_names))
    search = create_model(
        "SearchBody", __config__=ConfigDict(
            extra="forbid", strict=True, json_schema_extra=extra("src", src_names, src_example)),
        query=(str, Field(min_length=1, max_length=lim.max_query_chars, pattern=NOT_BLANK,
                          description="Search query text.")),
        **fields(src_names))
    return recommend, search


#: what a retriever needs of a request, as JSON Schema
HISTORY = {"required": ["history"], "properties": {"history": {"minItems": 1}}}
USER = {"required": ["user"], "properties": {"user": {"type": "string"}}}


def retriever_rules(ranker: Ranker, task: str, names: list[str]) -> list[dict[str, Any]]:
    """``if``/``then`` rules that say what each retriever of ``task`` needs (the one a request
    names, or the first when it names none): a history (a retriever that reads only the
    history), or a user or a history (one that reads the user's vector when given)."""
    rules: list[dict[str, Any]] = []
    for index, name in enumerate(names):
        retriever = ranker.retrievers.get(task, name)
        if retriever is None:  # pragma: no cover - names come from the same set
            continue
        if retriever.problem(1, 0):
            need: dict[str, Any] = HISTORY
        elif retriever.problem(0, 0):
            need = {"anyOf": [USER, HISTORY]}
        else:
            continue
        rules.append({"if": {"properties": {"retriever": {"const": name}},
                             "required": ["retriever"]}, "then": need})
        if index == 0:  # the default: no retriever named
            rules.append({"if": {"properties": {"retriever": {"type": "null"}}}, "then": need})
    return rules
