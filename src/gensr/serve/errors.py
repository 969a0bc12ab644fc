"""Errors of the inference API: each carries the HTTP status the service answers with.

They are :class:`~gensr.errors.GensrError` s, so ``gensr rank`` prints them as one line.
"""

from __future__ import annotations

from gensr.errors import GensrError


class RequestError(GensrError):
    """A ranking request that cannot be served as asked (HTTP 422 unless a subclass says).

    ``code`` is a short machine-readable name; ``field`` the request field at fault, if any.
    """

    status: int = 422
    code: str = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def shown_ids(ids: list[str], most: int = 10, width: int = 40) -> str:
    """``'A', 'B'`` for a message: at most ``most`` ids, each cut to ``width`` characters
    (a hostile request's ids are echoed, never in full)."""
    return ", ".join(repr(i if len(i) <= width else i[: width - 1] + "…")
                     for i in ids[:most])


class UnknownItemError(RequestError):
    """Item ids that are not in the model's catalogue (all of them are named)."""

    code = "unknown_item"

    def __init__(self, field: str, items: list[str]) -> None:
        shown = shown_ids(items)
        more = f" and {len(items) - 10} more" if len(items) > 10 else ""
        noun = "item id" if len(items) == 1 else "item ids"
        super().__init__(f"unknown {noun} in {field}: {shown}{more}", field=field)
        self.items = items


class UnknownUserError(RequestError):
    """A user id that the model's data does not know, for a model that reads user ids."""

    code = "unknown_user"


class UserRequiredError(RequestError):
    """The model reads user ids (a learned user vector) and the request names no user."""

    code = "user_required"


class TaskNotServedError(RequestError):
    """The model does not serve the request's task (e.g. bm25 asked to recommend)."""

    code = "task_not_served"


class OverloadedError(RequestError):
    """The service is at capacity (request queue or unseen-query table full): retry later."""

    status = 503
    code = "overloaded"


class ServeDependencyError(GensrError):
    """fastapi/uvicorn are missing: the ``[serve]`` extra is not installed."""
