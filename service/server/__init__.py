"""The HTTP and WebSocket server: the app, sessions, protocol, security, the ingest worker, stats and metrics."""
