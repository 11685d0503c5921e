"""The loaded service's parts, below its HTTP and WebSocket edge: the components and their loading,
retrieval on the service's threads, the ingest worker, grounding thresholds and counters."""
