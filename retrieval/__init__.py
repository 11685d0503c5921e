"""Retrieval: embed queries, search Qdrant, assemble context under a token budget."""
