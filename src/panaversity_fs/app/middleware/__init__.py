"""The pipeline every tool call goes through, one concern per middleware, outermost first:

1. `ObserveCalls`    request id, one JSON log line, latency and error metrics;
2. `TranslateErrors` whatever is raised becomes the JSON tool error (the one translation point);
3. `IdentifyCallers` the caller from the bearer token or the client name: the call's `Operation`;
4. `LimitCalls`      the agent's rate budget, then a slot among the calls running at once;
5. `AuthorizeCalls`  the token's scope, user and book limits (denials audited, within a budget);
6. `ApplyDeadlines`  the call's deadline.

They run as one FastMCP middleware (`CallPipeline`). `PublishedTools` serves `tools/list`. The
HTTP routes use the same pieces through `app.http` (identity, access rules, error statuses, the
log line and metrics).
"""

from __future__ import annotations

from fastmcp.server.middleware import Middleware

from panaversity_fs.app.middleware.access import AuthorizeCalls
from panaversity_fs.app.middleware.calls import CallPipeline
from panaversity_fs.app.middleware.deadline import ApplyDeadlines
from panaversity_fs.app.middleware.errors import TranslateErrors
from panaversity_fs.app.middleware.identity import IdentifyCallers
from panaversity_fs.app.middleware.limits import LimitCalls
from panaversity_fs.app.middleware.observe import ObserveCalls
from panaversity_fs.app.middleware.schemas import PublishedTools
from panaversity_fs.app.resources import ServerState
from panaversity_fs.config import Settings

__all__ = [
    "ApplyDeadlines",
    "AuthorizeCalls",
    "CallPipeline",
    "IdentifyCallers",
    "LimitCalls",
    "ObserveCalls",
    "PublishedTools",
    "TranslateErrors",
    "pipeline",
]


def pipeline(state: ServerState, settings: Settings) -> tuple[list[Middleware], LimitCalls]:
    """The middleware of a server (the call pipeline as one `CallPipeline`, then
    `PublishedTools`) and its limiter (for /metrics and tests)."""
    limits = LimitCalls(state, settings)
    calls = CallPipeline(
        [
            ObserveCalls(state),
            TranslateErrors(),
            IdentifyCallers(),
            limits,
            AuthorizeCalls(state, limits),
            ApplyDeadlines(settings),
        ]
    )
    return [calls, PublishedTools()], limits
