"""The one access guard (token, session cookie, Origin) and the response headers every route gets.

Each route handler names its access level in ``opt={"access": ...}``:
- ``public``: the demo page, static files, health;
- ``read``: ``/ws`` and ``/api/source``: the token, or the session cookie that ``/`` sets;
- ``admin``: ingest (writes) and job lists and stats (admin reads): the token only.
Whatever the level, a request whose ``Origin`` is not the service's own (or one listed in
``SMALLFIRST_ALLOWED_ORIGINS``) is refused; the Host header is checked before any of this by
Litestar's allowed-hosts middleware.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from litestar.config.allowed_hosts import AllowedHostsConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Message, Scope

from smallfirst.credentials import LOCAL_HEADER, new_local_key, server_token
from smallfirst.errors import Forbidden, Unauthorized
from smallfirst.settings import Settings

ACCESS = "access"
SESSION_COOKIE = "smallfirst_session"
SUBPROTOCOL = "smallfirst"
TOKEN_SUBPROTOCOL_PREFIX = "bearer."
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


class Access(str, Enum):
    PUBLIC = "public"
    READ = "read"
    ADMIN = "admin"


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def _offered_subprotocols(connection: ASGIConnection[Any, Any, Any, Any]) -> list[str]:
    return [p.strip() for p in connection.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]


def chosen_subprotocol(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """``smallfirst`` when the client offered it (it must, to send its token as a subprotocol)."""
    return SUBPROTOCOL if SUBPROTOCOL in _offered_subprotocols(connection) else None


@dataclass(frozen=True)
class Policy:
    """The credentials of this run and the origins it trusts."""

    settings: Settings
    token: str | None
    session: str | None
    local_key: str

    @classmethod
    def start(cls, settings: Settings) -> "Policy":
        """Read or generate the token and write a fresh local key into DATA_DIR."""
        token = server_token(settings)
        session = hmac.new(token.encode(), b"smallfirst session", hashlib.sha256).hexdigest() if token else None
        return cls(settings, token, session, new_local_key(settings))

    @property
    def enforced(self) -> bool:
        return self.token is not None

    def _matches(self, given: str | None, expected: str | None) -> bool:
        return bool(given) and expected is not None and hmac.compare_digest(given.encode(), expected.encode())  # type: ignore[union-attr]

    def presented_token(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
        """The token from ``Authorization: Bearer`` or a ``bearer.TOKEN`` WebSocket subprotocol (never the URL)."""
        header = connection.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            return header[7:].strip()
        for protocol in _offered_subprotocols(connection):
            if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
                return protocol[len(TOKEN_SUBPROTOCOL_PREFIX):]
        return None

    def has_token(self, connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
        return self._matches(self.presented_token(connection), self.token)

    def has_session(self, connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
        return self._matches(connection.cookies.get(SESSION_COOKIE), self.session)

    def is_local(self, connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
        """The request carries the local key: its sender can read DATA_DIR on this machine."""
        return self._matches(connection.headers.get(LOCAL_HEADER), self.local_key)

    def own_origin(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        secure = connection.scope.get("scheme") in ("https", "wss")
        return f"{'https' if secure else 'http'}://{connection.headers.get('host', '')}".lower()

    def origin_ok(self, connection: ASGIConnection[Any, Any, Any, Any], strict: bool = True) -> bool:
        """The exact own origin, or one listed in ``allowed_origins``. Without an Origin header (not a
        browser, or a navigation), ``strict`` also refuses a browser request its Sec-Fetch-Site marks cross-site."""
        origin = connection.headers.get("origin")
        if origin is None:
            return not strict or connection.headers.get("sec-fetch-site", "none") in ("same-origin", "none")
        origin = origin.rstrip("/").lower()
        return origin == self.own_origin(connection) or origin in {o.rstrip("/").lower() for o in self.settings.allowed_origins}

    def check(self, connection: ASGIConnection[Any, Any, Any, Any], access: Access) -> None:
        """Raise unless ``connection`` may use a route of level ``access``."""
        if not self.origin_ok(connection, strict=access is not Access.PUBLIC):
            raise Forbidden("cross-origin requests are not allowed (SMALLFIRST_ALLOWED_ORIGINS)")
        if access is Access.PUBLIC or not self.enforced:
            return
        if self.has_token(connection) or (access is Access.READ and self.has_session(connection)):
            return
        raise Unauthorized("missing or wrong token: send 'Authorization: Bearer TOKEN' (see DATA_DIR/api-token)")


def access_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The one guard of every route: the handler's ``access`` level, public when it names none."""
    policy: Policy = connection.app.state.policy
    policy.check(connection, Access(handler.opt.get(ACCESS, Access.ADMIN)))


def allowed_hosts(settings: Settings) -> AllowedHostsConfig:
    """Loopback names, the listening host (unless a wildcard address) and ``allowed_hosts``, with and without the port."""
    names = list(LOOPBACK_NAMES)
    if settings.host not in ("0.0.0.0", "::", ""):
        names.append(f"[{settings.host}]" if ":" in settings.host else settings.host)
    names += list(settings.allowed_hosts)
    if "*" in names:
        return AllowedHostsConfig(allowed_hosts=["*"])
    return AllowedHostsConfig(allowed_hosts=[h for name in names for h in (name, f"{name}:{settings.port}")])


PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SOURCE_CSP = "sandbox; default-src 'none'"
_SAFE_HOST = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}$")


async def security_headers(message: Message, scope: Scope) -> None:
    """Every HTTP response: a CSP (unless the route set a stricter one), no framing, no sniffing, no referrer."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    if "content-security-policy" not in headers:
        host = MutableScopeHeaders(scope).get("host", "")
        headers["Content-Security-Policy"] = PAGE_CSP.format(host=host if _SAFE_HOST.match(host) else "'none'")
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"


class RedactTokens(logging.Filter):
    """Keeps tokens out of the server's logs: a ``token=`` query value or a bearer value is replaced."""

    _pattern = re.compile(r"((?:token|api_token|access_token)=|[Bb]earer[ .])[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self._pattern.sub(r"\1[redacted]", message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redact_server_logs() -> None:
    """Install :class:`RedactTokens` on the loggers that print request lines."""
    for name in ("uvicorn.access", "uvicorn.error", "litestar", ""):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
