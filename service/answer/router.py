"""Choose the tier for an answer before any small-model token is spent."""

from __future__ import annotations

from dataclasses import dataclass

from smallfirst.settings import Settings


@dataclass(frozen=True)
class Route:
    """The tier that should answer, and why it is not the small one."""

    tier: str  # "small" or "large"
    reason: str | None = None  # no_context | low_grounding | hard_query | small_unavailable
    forced: bool = False


STRONG_MARGIN = 0.25  # top score this far above the grounding threshold counts as strong retrieval


def hard_threshold(top_score: float, grounding_threshold: float, settings: Settings) -> float:
    """The classifier probability needed to call a question hard: the base threshold at the
    grounding threshold, rising to the strong one as retrieval gets stronger. A plain lookup
    whose answer retrieval clearly found should stay with the small tier."""
    strength = min(1.0, max(0.0, (top_score - grounding_threshold) / STRONG_MARGIN))
    low, high = settings.hard_query_threshold, max(settings.hard_query_threshold, settings.hard_query_strong_threshold)
    return low + (high - low) * strength


def choose_tier(
    top_score: float | None, hard_probability: float, settings: Settings, forced: str | None = None,
    small_saturated: bool = False, grounding_threshold: float | None = None,
) -> Route:
    """Route from the retrieval scores and the hard-query classifier (or the request's forced tier).
    ``grounding_threshold`` is the collection's calibrated one (the setting's when None)."""
    if forced is not None:
        return Route(forced, forced=True)
    threshold = grounding_threshold if grounding_threshold is not None else settings.grounding_threshold_or_default
    if top_score is None or top_score < settings.min_score:
        return Route("large", "no_context")
    if top_score < threshold:
        return Route("large", "low_grounding")
    if hard_probability >= hard_threshold(top_score, threshold, settings):
        return Route("large", "hard_query")
    if small_saturated:
        return Route("large", "small_unavailable")
    return Route("small")
