"""``smallfirst loadtest``: drive the WebSocket protocol with many clients and report latency as users feel it."""
