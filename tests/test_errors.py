"""Each error class answers HTTP with its own status, and a busy refusal says when to retry."""

from __future__ import annotations

import pytest

from smallfirst.errors import (BadRequest, Busy, ConfigError, Forbidden, RateLimited, RetrievalUnavailable, SmallfirstError,
                              StoreLocked, TooLarge, Unauthorized, UnsupportedMediaType, UpstreamError, UpstreamTimeout)
from smallfirst.service.server.app import smallfirst_error
from smallfirst.service.protocol import error_frame


@pytest.mark.parametrize(("error", "status"), [
    (BadRequest("x"), 400), (UnsupportedMediaType("x"), 415), (Unauthorized("x"), 401), (Forbidden("x"), 403),
    (TooLarge("x"), 413), (RateLimited("x"), 429), (Busy("x"), 503), (RetrievalUnavailable("x"), 503),
    (StoreLocked("x"), 503), (UpstreamTimeout("x"), 504), (UpstreamError("x"), 502), (ConfigError("x"), 500),
    (SmallfirstError("x"), 500),
])
def test_each_error_class_has_its_http_status(error: SmallfirstError, status: int) -> None:
    response = smallfirst_error(None, error)  # type: ignore[arg-type]
    assert response.status_code == status
    assert response.content == {"code": error.code, "message": "x", "retryable": error.retryable}


def test_a_busy_refusal_carries_when_to_retry() -> None:
    busy = Busy("full", retry_after_ms=2500)
    assert error_frame(busy, "a1") == {"type": "error", "id": "a1", "code": "busy", "message": "full", "retryable": True,
                                       "retry_after_ms": 2500}
    assert smallfirst_error(None, busy).headers["Retry-After"] == "3"  # type: ignore[arg-type]
    assert "retry_after_ms" not in error_frame(Busy("loading"), None)
