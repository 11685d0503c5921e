"""Ingestion: discover, load, chunk, embed and upsert documents; prune what was removed."""
