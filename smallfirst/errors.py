"""The one error hierarchy; each class carries the protocol error code and the HTTP status it maps to."""

from __future__ import annotations


class SmallfirstError(Exception):
    """Base of every error the project raises on purpose."""

    code: str = "internal"
    retryable: bool = False
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(SmallfirstError):
    """The client sent something malformed or invalid."""

    code = "bad_request"
    http_status = 400


class UnsupportedMediaType(BadRequest):
    """A request body of the wrong content type."""

    http_status = 415


class TooLarge(SmallfirstError):
    """A frame, a field or a request body is over its size limit."""

    code = "too_large"
    http_status = 413


class Unauthorized(SmallfirstError):
    """The request carries no valid token."""

    code = "unauthorized"
    http_status = 401


class Forbidden(SmallfirstError):
    """The request is not allowed: a foreign origin, a path outside the ingest roots."""

    code = "forbidden"
    http_status = 403


class RateLimited(SmallfirstError):
    """The connection sends faster than its rate limit."""

    code = "rate_limited"
    retryable = True
    http_status = 429


class Busy(SmallfirstError):
    """The service cannot take the request now (queue full, over its wait budget, still loading).
    ``retry_after_ms``, when known, says how long until a retry would likely be admitted."""

    code = "busy"
    retryable = True
    http_status = 503

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class RetrievalUnavailable(SmallfirstError):
    """The vector store or the embedder cannot serve the request."""

    code = "retrieval_unavailable"
    retryable = True
    http_status = 503


class UpstreamTimeout(SmallfirstError):
    """A model backend did not answer in time."""

    code = "upstream_timeout"
    retryable = True
    http_status = 504


class UpstreamError(SmallfirstError):
    """A model backend failed."""

    code = "upstream_error"
    retryable = True
    http_status = 502


class StoreLocked(SmallfirstError):
    """The embedded store folder is held by another process."""

    code = "retrieval_unavailable"
    http_status = 503


class ConfigError(SmallfirstError):
    """The configuration cannot work (missing model file, bad path)."""

    code = "internal"
