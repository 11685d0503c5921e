"""The HTTP and WebSocket edge: the app and its routes, sessions, security, uploads, limits, readiness, metrics and logs."""
