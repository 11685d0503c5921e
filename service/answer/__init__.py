"""Grounded answers: route, retrieve, generate on the small tier, check, escalate to the large tier."""
