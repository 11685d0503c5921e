"""/schema documents the real response shapes, and the routes answer in those shapes."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from smallfirst.service.server import schemas
from tests.conftest import Server

pytestmark = pytest.mark.slow


def ref(schema: dict, path: str, method: str, status: str) -> str:
    content = schema["paths"][path][method]["responses"][status]["content"]
    found = next(iter(content.values()))["schema"]
    return (found.get("items") or found)["$ref"].rsplit("/", 1)[-1]


def test_schema_has_the_response_shapes(server: Server) -> None:
    assert httpx.get(server.http + "/schema/openapi.json").status_code == 401  # the token or the page's cookie
    with server.api() as api:
        schema = api.get("/schema/openapi.json").json()
    assert ref(schema, "/healthz", "get", "200") == "Health"
    assert ref(schema, "/readyz", "get", "200") == ref(schema, "/readyz", "get", "503") == "Readiness"
    assert ref(schema, "/api/stats", "get", "200") == "Stats"
    assert ref(schema, "/api/stats", "get", "401") == "ErrorBody"
    assert ref(schema, "/api/ingest", "get", "200") == ref(schema, "/api/ingest", "post", "202") == "IngestJob"
    assert ref(schema, "/api/ingest/{job_id}", "get", "200") == "IngestJob"
    shapes = schema["components"]["schemas"]
    assert {"tiers", "escalations", "fallbacks", "grounding", "large_tier"} <= set(shapes["Stats"]["properties"])
    assert {"state", "progress", "summary"} <= set(shapes["IngestJob"]["properties"])
    assert {"p50", "p95"} <= set(shapes["Percentiles"]["properties"])
    assert not any(p.startswith("/schema") for p in schema["paths"])


def test_routes_answer_in_their_documented_shapes(server: Server) -> None:
    """A key a route sends that its shape lacks (or the reverse) fails here, not in a client."""
    with server.api() as api:
        msgspec.convert(api.get("/healthz").json(), schemas.Health)
        ready = msgspec.convert(api.get("/readyz").json(), schemas.Readiness)
        assert ready.status == "ready" and ready.model
        stats = msgspec.convert(api.get("/api/stats").json(), schemas.Stats)
        assert "small" in stats.tiers and stats.large_tier.configured is False
        jobs = msgspec.convert(api.get("/api/ingest").json(), list[schemas.IngestJob])
        assert isinstance(jobs, list)
        error = msgspec.convert(httpx.get(server.http + "/api/stats").json(), schemas.ErrorBody)
        assert error.code == "unauthorized"
