"""The routing table: method and path template (``/jobs/{id}``) to handler, with 404 and 405
answers that say what exists."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .http import HTTPError, Request, Response, StreamResponse

__all__ = ["Handler", "Route", "Router"]

Handler = Callable[[Request], Awaitable[Response | StreamResponse]]
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Route:
    """``method path`` handled by ``handler``; ``summary`` is its one-line description."""

    method: str
    path: str
    handler: Handler
    summary: str = ""
    pattern: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        regex = _PLACEHOLDER.sub(lambda m: f"(?P<{m.group(1)}>[^/]+)", re.escape(self.path)
                                 .replace(r"\{", "{").replace(r"\}", "}"))
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))


class Router:
    """Finds the route for a request and fills ``request.params`` from the path."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)
        seen = set()
        for route in self.routes:
            if (route.method, route.path) in seen:
                raise ValueError(f"route {route.method} {route.path} is declared twice")
            seen.add((route.method, route.path))

    def match(self, request: Request) -> Route:
        allowed = []
        for route in self.routes:
            found = route.pattern.match(request.path)
            if found is None:
                continue
            if route.method == request.method:
                request.params = found.groupdict()
                return route
            allowed.append(route.method)
        if allowed:
            raise HTTPError(405, f"{request.method} is not allowed on {request.path} (allowed: "
                                 f"{', '.join(allowed)})", headers=[("allow", ", ".join(allowed))])
        raise HTTPError(404, f"no such resource: {request.method} {request.path} (the routes "
                             "are listed in /openapi.json)")
