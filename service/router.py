"""Choose the tier for an answer before any small-model token is spent."""

from __future__ import annotations

from dataclasses import dataclass

from retrieval.settings import Settings


@dataclass(frozen=True)
class Route:
    """The tier that should answer, and why it is not the small one."""

    tier: str  # "small" or "large"
    reason: str | None = None  # no_context | low_grounding | hard_query | small_unavailable
    forced: bool = False


def choose_tier(
    top_score: float | None, hard_probability: float, settings: Settings, forced: str | None = None,
    small_saturated: bool = False,
) -> Route:
    """Route from the retrieval scores and the hard-query classifier (or the request's forced tier)."""
    if forced is not None:
        return Route(forced, forced=True)
    if top_score is None or top_score < settings.min_score:
        return Route("large", "no_context")
    if top_score < settings.grounding_threshold:
        return Route("large", "low_grounding")
    if hard_probability >= settings.hard_query_threshold:
        return Route("large", "hard_query")
    if small_saturated:
        return Route("large", "small_unavailable")
    return Route("small")
