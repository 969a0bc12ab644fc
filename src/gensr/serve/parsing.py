"""The command-line syntax of ``gensr rank``: histories and candidate lists as short strings.

* ``--history "B001,B002:rec,B003:src:usb cable"``: comma-separated interactions, oldest
  first, each ``ITEM[:BEHAVIOUR[:QUERY]]`` (behaviour ``rec`` unless given; the query is
  everything after the second colon, so it may hold colons but not commas);
* ``--candidates "B004,B005"``: comma-separated item ids;
* either may be ``@FILE``: a JSON list (of ids, or of ``{"item", "behaviour", "query"}``
  objects / ``[item, behaviour, query]`` lists for histories), or plain text with one
  entry per line in the syntax above (where commas are then allowed in queries);
* ``--request FILE`` (``-`` = stdin): the JSON body of ``POST /v1/rank`` (with ``--full``:
  of ``POST /v1/recommend`` or ``/v1/search``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from gensr.errors import ConfigError
from gensr.serve.requests import REQUEST_FIELDS, Interaction, RankRequest


def _entry(text: str, where: str) -> Interaction:
    item, _, rest = text.strip().partition(":")
    behaviour, _, query = rest.partition(":")
    item, behaviour = item.strip(), behaviour.strip() or "rec"
    if not item:
        raise ConfigError(f"{where}: empty item id in {text!r}")
    return Interaction(item, behaviour, query.strip() or None)


def _read(spec: str, what: str) -> tuple[list[Any] | None, list[str]]:
    """(a JSON list, None) or (None, lines) for ``@FILE``; (None, comma parts) otherwise."""
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise ConfigError(f"{what}: file {path} does not exist")
        text = path.read_text()
        if text.lstrip().startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: not valid JSON ({err})") from None
            return value, []
        return None, [line for line in text.splitlines() if line.strip()]
    return None, [part for part in spec.split(",") if part.strip()]


def parse_history(spec: str | None) -> list[Any]:
    """History entries from ``--history`` (see the module docstring)."""
    if not spec:
        return []
    value, parts = _read(spec, "--history")
    if value is not None:
        return value
    return [_entry(p, f"--history entry {i + 1}") for i, p in enumerate(parts)]


def parse_candidates(spec: str) -> list[Any]:
    """Candidate ids from ``--candidates`` (see the module docstring)."""
    value, parts = _read(spec, "--candidates")
    if value is not None:
        return value
    return [p.strip() for p in parts]


def _read_json_body(path: str) -> tuple[str, dict]:
    """(where, the JSON object) of a request file; ``-`` reads stdin."""
    where = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read {where}: {err.strerror}") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: the request must be a JSON object")
    return where, body


def load_request(path: str) -> RankRequest:
    """A request from a JSON file (the body of ``POST /v1/rank``); ``-`` reads stdin."""
    where, body = _read_json_body(path)
    extra = set(body) - set(REQUEST_FIELDS)
    if extra:
        raise ConfigError(f"{where}: unknown field(s) {sorted(extra)}; expected "
                          f"{', '.join(REQUEST_FIELDS)}")
    return RankRequest(history=body.get("history") or [], candidates=body.get("candidates")
                       or [], query=body.get("query"), top_k=body.get("top_k"),
                       user=body.get("user"))


def load_full_request(path: str):
    """A full-catalogue request from a JSON file (the body of ``POST /v1/recommend`` or, with
    a query, ``/v1/search``); ``-`` reads stdin."""
    from gensr.serve.errors import RequestError
    from gensr.serve.full import full_request_from_mapping

    where, body = _read_json_body(path)
    try:
        return full_request_from_mapping(body)
    except RequestError as err:
        raise ConfigError(f"{where}: {err}") from None
