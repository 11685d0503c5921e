"""The one error hierarchy; each class carries the protocol error code it maps to."""

from __future__ import annotations


class SmallfirstError(Exception):
    """Base of every error the project raises on purpose."""

    code: str = "internal"
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(SmallfirstError):
    """The client sent something malformed or invalid."""

    code = "bad_request"


class TooLarge(SmallfirstError):
    """A frame or a field is over its size limit."""

    code = "too_large"


class RateLimited(SmallfirstError):
    """The connection sends faster than its rate limit."""

    code = "rate_limited"
    retryable = True


class Busy(SmallfirstError):
    """The service cannot take the request now (queue full, still loading)."""

    code = "busy"
    retryable = True


class RetrievalUnavailable(SmallfirstError):
    """The vector store or the embedder cannot serve the request."""

    code = "retrieval_unavailable"
    retryable = True


class UpstreamTimeout(SmallfirstError):
    """A model backend did not answer in time."""

    code = "upstream_timeout"
    retryable = True


class UpstreamError(SmallfirstError):
    """A model backend failed."""

    code = "upstream_error"
    retryable = True


class StoreLocked(SmallfirstError):
    """The embedded store folder is held by another process."""

    code = "retrieval_unavailable"


class ConfigError(SmallfirstError):
    """The configuration cannot work (missing model file, bad path)."""

    code = "internal"
