"""The service: Litestar app, WebSocket protocol, request pipelines, model backends."""
