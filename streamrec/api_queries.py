"""The four GET query endpoints of the HTTP API: their answers, and the fast path serving them.

:class:`QueryAnswers` runs a query (lazy refresh, latency metric, errors as JSON with their
status codes) and returns ready JSON bytes. FastAPI declares the routes, so they are in the
OpenAPI schema and validate their parameters; :class:`QueryFastPath`, an ASGI middleware in
front of FastAPI's router, answers the well-formed requests itself and hands every other
request to FastAPI unchanged.

Why a hand-written fast path: at 100k items a recommendation costs the server about 1.1 ms
of CPU, and FastAPI's per-request dependency solving and route wrappers were 0.2 ms of it
(a bare FastAPI route costs 0.26 ms per request, a Starlette route 0.07-0.14 ms, measured
with bench/api_load.py's client). The answers are the same bytes either way
(tests/streamrec/test_api.py compares them).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from store.embedding_schema import NoActiveVersionError
from streamrec.api_bodies import NO_VERSION
from streamrec.metrics import Metrics
from streamrec.queries import QueryService, UnknownItem, UnknownUser
from streamrec.refresher import Refresher

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: What the routes accept for ``k`` and ``exclude_seen`` without FastAPI's validation; any
#: other spelling (``k=0``, ``k=+5``, ``exclude_seen=Yes``) goes to FastAPI, which accepts
#: it or answers 422 with its own validation error body.
_K = re.compile(r"[1-9][0-9]{0,3}")
_BOOL = {"true": True, "1": True, "false": False, "0": False}
K_MAX = 1000
#: Defaults of the routes' ``k`` and ``exclude_seen``, for FastAPI's routes and the fast path.
K_DEFAULT = 10
EXCLUDE_SEEN_DEFAULT = True

_ROUTES = (
    (re.compile(r"/users/([^/]+)/recommendations"), "recommendations"),
    (re.compile(r"/items/([^/]+)/similar"), "similar"),
    (re.compile(r"/users/([^/]+)/embedding"), "user_embedding"),
    (re.compile(r"/items/([^/]+)/embedding"), "item_embedding"),
)
_PARAMS = {"recommendations": ("k", "exclude_seen"), "similar": ("k",),
           "user_embedding": (), "item_embedding": ()}


def _json(obj: Any) -> bytes:
    # as Starlette's JSONResponse renders FastAPI's HTTPException bodies
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def json_safe(obj: Any) -> Any:
    """JSON has no NaN/inf: replace them by None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


class QueryAnswers:
    """The query endpoints' answers as ``(status, JSON bytes)``.

    Errors: 503 with ``{"detail": ...}`` while no version is active, 404 for an unknown user
    or item, 422 for a ``k`` the service rejects. Each call first lets ``refresher`` check
    for a new version when no background thread does, and observes its duration under the
    endpoint's name in ``metrics``.
    """

    def __init__(self, service: QueryService, refresher: Refresher, metrics: Metrics) -> None:
        self.service, self.refresher, self.metrics = service, refresher, metrics

    def __repr__(self) -> str:
        return f"QueryAnswers(service={self.service!r})"

    def answer(self, endpoint: str, fn: Callable[[], dict]) -> tuple[int, bytes]:
        self.refresher.maybe_check()
        try:
            with self.metrics.api.time(endpoint):
                return 200, json.dumps(json_safe(fn()), separators=(",", ":")).encode()
        except NoActiveVersionError:
            status, detail = 503, NO_VERSION
        except (UnknownUser, UnknownItem) as exc:
            status, detail = 404, str(exc.args[0] if exc.args else exc)
        except ValueError as exc:
            status, detail = 422, str(exc)
        self.metrics.api.error(endpoint, status)
        return status, _json({"detail": detail})

    def recommendations(self, user_id: str, k: int, exclude_seen: bool) -> tuple[int, bytes]:
        return self.answer("recommendations",
                           lambda: self.service.recommend(user_id, k, exclude_seen=exclude_seen))

    def similar(self, item_id: str, k: int) -> tuple[int, bytes]:
        return self.answer("similar", lambda: self.service.similar(item_id, k))

    def user_embedding(self, user_id: str) -> tuple[int, bytes]:
        return self.answer("user_embedding", lambda: self.service.embedding("user", user_id))

    def item_embedding(self, item_id: str) -> tuple[int, bytes]:
        return self.answer("item_embedding", lambda: self.service.embedding("item", item_id))

    def by_name(self, endpoint: str, node_id: str, params: dict[str, Any]) -> tuple[int, bytes]:
        """The answer of ``endpoint`` (a name in :data:`_PARAMS`) with parsed parameters."""
        if endpoint == "recommendations":
            return self.recommendations(node_id, params.get("k", K_DEFAULT),
                                        params.get("exclude_seen", EXCLUDE_SEEN_DEFAULT))
        if endpoint == "similar":
            return self.similar(node_id, params.get("k", K_DEFAULT))
        return getattr(self, endpoint)(node_id)


class QueryFastPath:
    """ASGI middleware: answers ``GET`` query requests with well-formed parameters through
    ``answers``; everything else (other routes and methods, a ``root_path``, a parameter given
    twice or spelled in a way it does not parse) goes to ``app``.

    Args:
        app: the rest of the ASGI stack (FastAPI's exception middleware and router).
        answers: the shared :class:`QueryAnswers`.
    """

    def __init__(self, app: ASGIApp, answers: QueryAnswers) -> None:
        self.app, self.answers = app, answers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hit = self.match(scope) if scope["type"] == "http" else None
        if hit is None:
            await self.app(scope, receive, send)
            return
        status, body = self.answers.by_name(*hit)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()),
                                (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def match(scope: Scope) -> tuple[str, str, dict[str, Any]] | None:
        """``(endpoint, node id, parameters)`` when the fast path answers ``scope``."""
        if scope.get("method") != "GET" or scope.get("root_path"):
            return None
        path = scope["path"]
        route = next(((name, found) for pattern, name in _ROUTES
                      if (found := pattern.fullmatch(path))), None)
        if route is None:
            return None
        endpoint, found = route
        params: dict[str, Any] = {}
        names = _PARAMS[endpoint]
        query = scope.get("query_string", b"").decode("latin-1")
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in names:
                continue  # FastAPI ignores parameters a route does not declare
            if name in params:
                return None
            if name == "k":
                if not _K.fullmatch(value) or int(value) > K_MAX:
                    return None
                params[name] = int(value)
            else:
                if value not in _BOOL:
                    return None
                params[name] = _BOOL[value]
        return endpoint, found.group(1), params


__all__ = ["EXCLUDE_SEEN_DEFAULT", "K_DEFAULT", "K_MAX", "QueryAnswers", "QueryFastPath",
           "json_safe"]
