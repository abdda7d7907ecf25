"""Route: GET /metrics in the Prometheus text format (open without an API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from minerva.api.state import server_state
from minerva.metrics import CONTENT_TYPE

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of this server's metrics."""
    return Response(server_state(request).metrics.render(), media_type=CONTENT_TYPE)
