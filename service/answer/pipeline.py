"""The answer pipeline: retrieve, route, stream from the small or the large tier, check, escalate."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np

from smallfirst.retrieval.answer_check import choose
from smallfirst.retrieval.context import Context
from smallfirst.retrieval.evidence import EvidenceSet
from smallfirst.retrieval.expectation import answer_phrase, expected, name_options
from smallfirst.retrieval.picking import Candidate, candidate_features, candidates, cited
from smallfirst.retrieval.support import Verdict, check_answer, quote_evidence
from smallfirst.errors import Busy, SmallfirstError, UpstreamTimeout
from smallfirst.service.distill.log import DISTILL_LOG_VERSION, hit_record
from smallfirst.service.llm.base import Backend, GenerationStats
from smallfirst.service.llm.prompts import ANSWER_STOPS, NOT_COVERED, evidence_passage_prompt, large_prompt
from smallfirst.service.llm.remote import LargeUnavailable
from smallfirst.service.protocol import Ask, source_entry
from smallfirst.service.request import Request, Send, ms
from smallfirst.service.answer.router import Route, choose_tier
from smallfirst.service.core.components import Components

log = logging.getLogger(__name__)

async def _fixed_text(text: str, stats: GenerationStats) -> AsyncIterator[str]:
    stats.finish = "stop"
    yield text


def _fallback_reason(error: BaseException) -> str:
    if isinstance(error, LargeUnavailable):
        return "large_unavailable"
    if isinstance(error, UpstreamTimeout):
        return "large_timeout"
    return "large_error"


@dataclass(frozen=True)
class Grounding:
    """What retrieval found for a question: the context for the large tier, the scored evidence
    for the small tier's prompt and its check."""

    context: Context
    evidence: EvidenceSet
    vector: np.ndarray  # the question's embedding
    hit_scores: tuple[float, ...]  # the search scores of the sources (the hits the evidence is drawn from), best first


async def answer(components: Components, msg: Ask, send: Send, req: Request) -> str:
    """Retrieve, score evidence, route, send ``sources``, then stream the answer from the chosen
    tier. A small answer is checked against its sources; an unsupported one is replaced."""
    small_over_budget = _admit(components, msg, req)
    try:
        return await _answer(components, msg, send, req, small_over_budget)
    finally:
        if req.reservation is not None:
            req.reservation.release()


def _admit(components: Components, msg: Ask, req: Request) -> bool:
    """Reserve the answer's place in the small model's queue before any retrieval, when its
    predicted wait fits the budget. Over budget, an answer that only the small tier could serve
    gets ``busy`` at once; else it is routed to the large tier (True)."""
    if msg.tier == "large":
        return False
    try:
        req.reservation = components.answer_model.admit(components.settings.answer_wait_budget_s)
    except Busy:
        if components.large is None or msg.tier == "small":
            components.stats.refused += 1
            raise
        return True
    return False


async def _answer(components: Components, msg: Ask, send: Send, req: Request, small_over_budget: bool) -> str:
    settings, retriever = components.settings, components.retriever
    t = time.perf_counter()
    vector = await retriever.embed_query(msg.question)
    req.timings["embed"] = ms(time.perf_counter() - t)
    t = time.perf_counter()
    hits = await retriever.search(vector, msg.top_k, msg.collection)
    req.timings["search"] = ms(time.perf_counter() - t)
    t = time.perf_counter()
    context, evidence = await retriever.ground(msg.question, hits)
    req.timings["evidence"] = ms(time.perf_counter() - t)
    route = choose_tier(
        hits[0].score if hits else None, components.classifier.probability(vector), settings, msg.tier,
        small_saturated=small_over_budget,
        grounding_threshold=components.calibrator.threshold(msg.collection),
    )
    await send({"type": "sources", "id": msg.id, "sources": [
        source_entry(h, ev) for h, ev in zip(context.sources, evidence.best)]})
    req.timings["sources"] = ms(time.perf_counter() - req.received)
    grounding = Grounding(context, evidence, vector, tuple(float(h.score) for h in context.sources))
    try:
        if route.tier == "large":
            finish = await _answer_large(components, msg, send, req, grounding, route)
        else:
            finish = await _answer_small(components, msg, send, req, grounding, route)
    finally:
        await req.finish()
    return finish


async def _escalate(components: Components, msg: Ask, send: Send, req: Request, reason: str, tier: str = "large") -> None:
    """Say why the answer goes to another tier; before the first token, or after a replaced answer."""
    components.stats.escalations[reason] += 1
    await req.drain()
    await send({"type": "escalated", "id": msg.id, "reason": reason, "tier": tier})


async def _fall_back(components: Components, msg: Ask, send: Send, req: Request, reason: str) -> None:
    components.stats.fallbacks[reason] += 1
    await req.drain()
    await send({"type": "fallback", "id": msg.id, "from": "large", "to": "small", "reason": reason})


async def _stream_large(
    components: Components, msg: Ask, send: Send, req: Request, grounding: Grounding, reason: str | None,
) -> str | None:
    """Stream the large tier's answer; the fallback reason when it is unconfigured or fails, else None."""
    large = components.large
    if large is None:
        await _fall_back(components, msg, send, req, "large_unconfigured")
        return "large_unconfigured"
    return await _stream_from(large, components, msg, send, req, grounding, reason)


async def _stream_from(
    large: Backend, components: Components, msg: Ask, send: Send, req: Request, grounding: Grounding, reason: str | None,
) -> str | None:
    """Stream ``large``'s answer (any backend); the fallback reason when it fails, else None."""
    settings = components.settings
    stats = req.segment("large")
    context = grounding.context
    prompt = large_prompt(context.text if settings.large_send_context else "", msg.question)
    started = time.perf_counter()
    try:
        await req.pump(send, large.stream(prompt, max_tokens=settings.large_max_tokens,
                                          temperature=settings.large_temperature, stats=stats))
    except SmallfirstError as exc:
        fallback = _fallback_reason(exc)
        log.warning("large tier failed for %s (%s): %s", msg.id, fallback, exc.message)
        await _fall_back(components, msg, send, req, fallback)
        return fallback
    req.finish_reason = stats.finish
    if components.distill is not None:
        # Teacher data: the answer and every input of the small tier's prompt (its sources).
        components.distill.record({
            "v": DISTILL_LOG_VERSION, "ts": time.time(), "id": msg.id, "question": msg.question,
            "reason": reason or "forced", "forced": msg.tier == "large", "collection": msg.collection,
            "sources": [hit_record(h) for h in context.sources], "sent_context": settings.large_send_context,
            "answer": req.text, "finish": stats.finish, "latency_ms": ms(time.perf_counter() - started),
            "usage": {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens},
            "cost_usd": req.cost_usd(), "model": settings.large_model,
        })
    return None


async def _answer_large(components: Components, msg: Ask, send: Send, req: Request, grounding: Grounding, route: Route) -> str:
    """The router chose the large tier (or the client forced it). ``escalated`` always comes first,
    with or without a large tier, so a client always learns why; ``fallback`` follows when the
    large tier is unconfigured or fails, and the small tier takes over."""
    if not route.forced:
        await _escalate(components, msg, send, req, route.reason or "forced")
    failed = await _stream_large(components, msg, send, req, grounding, route.reason)
    if failed is None:
        return req.finish_reason
    return await _answer_small(components, msg, send, req, grounding, route, continuing=req.text)


async def _answer_small(
    components: Components, msg: Ask, send: Send, req: Request, grounding: Grounding, route: Route, continuing: str = "",
) -> str:
    """The small tier's answer, from the evidence-first prompt, then checked against the sources.

    When the retrieval scores said the documents do not hold the answer (``no_context`` or
    ``low_grounding``), it says so plainly instead of inventing one. A grounded answer (routed
    to the small tier, or forced there) that fails the check is replaced: by the large tier's
    answer where one is configured, else by the evidence itself, flagged.
    """
    settings = components.settings
    stats = req.segment("small")
    if route.reason in ("no_context", "low_grounding") and not route.forced:
        await req.pump(send, _fixed_text(NOT_COVERED if not continuing else "", stats))
        return stats.finish
    evidence = grounding.evidence
    sourced = evidence_passage_prompt(evidence, msg.question, settings.evidence_windows)
    prompt = sourced.text + continuing
    # States are saved at each passage's end; a whole prompt's state would save only the question's
    # few tokens more, at the cost of another copy of the sources, so only a prompt without passages saves it.
    save_at = () if sourced.passages else (len(prompt),)
    offset = len(req.text)
    reservation, req.reservation = req.reservation, None
    shape, shape_probability = _shape(components, msg.question, grounding.vector)
    expectation = expected(msg.question) if settings.answer_name_choice and not continuing else None
    sources_text = "\n".join(h.text for h in evidence.hits)
    spans: list[Candidate] = []
    if settings.answer_pick and not continuing and shape is not None and (shape != "name" or settings.answer_name_choice):
        spans = candidates(shape, msg.question, evidence.ranked, sources_text)
    options = name_options(msg.question, expectation, evidence.ranked, sources_text) \
        if expectation is not None and not spans else []
    picked: Verdict | None = None
    try:
        if spans:  # picked from the evidence: the candidate the pick model finds likeliest right
            scores = await components.answer_model.option_scores(
                prompt, [c.text for c in spans], stats=stats, reservation=reservation, save_at=save_at,
                passages=sourced.passages)
            text, picked = _pick(components, msg, grounding, spans, scores, shape, shape_probability, req)
            await req.pump(send, _fixed_text(text, stats))
        elif options and expectation is not None:  # the question asks for a name: pick it among those the evidence gives
            best = await components.answer_model.choose(prompt, [name for name, _ in options], stats=stats,
                                                        reservation=reservation, save_at=save_at,
                                                        passages=sourced.passages)
            name, source = options[best]
            await req.pump(send, _fixed_text(f"{answer_phrase(name, expectation)} [{source + 1}].", stats))
        else:
            await req.pump(send, components.answer_model.stream(
                prompt, max_tokens=settings.answer_max_tokens, stop=ANSWER_STOPS,
                temperature=settings.answer_temperature, stats=stats, reservation=reservation,
                save_at=save_at, passages=sourced.passages,
            ))
    except Busy:
        # Given up in the queue, before any token: the model fell behind the admission's promise.
        if continuing or route.forced or components.large is None:
            raise
        await _escalate(components, msg, send, req, "small_unavailable")
        if await _stream_large(components, msg, send, req, grounding, "small_unavailable") is None:
            return req.finish_reason
        raise
    finish = stats.finish
    small_answer = req.text[offset:]
    verdict = picked if picked is not None else check_answer(msg.question, small_answer, evidence.ranked, [h.text for h in evidence.hits])
    req.extra.update({**verdict.as_dict(), "small_answer": small_answer})
    if picked is not None:
        req.extra["picked"] = shape
    components.stats.checks["supported" if verdict.supported else "unsupported"] += 1
    grounded = route.tier == "small" and route.reason is None  # routed to the small tier, or forced there
    if verdict.supported or not grounded or continuing or finish == "cancelled":
        return finish
    # An unsupported grounded answer is never left standing as the answer.
    forced_small = route.forced
    await _escalate(components, msg, send, req, "unsupported_answer", "small" if forced_small else "large")
    req.restart_text()
    if not forced_small and await _stream_large(components, msg, send, req, grounding, "unsupported_answer") is None:
        return req.finish_reason
    req.extra["flagged"] = True
    number = verdict.evidence.source + 1 if verdict.evidence is not None else None
    await req.pump(send, _fixed_text(quote_evidence(verdict.evidence, number), req.segment("small")))
    return "stop"


def _shape(components: Components, question: str, vector: np.ndarray) -> tuple[str | None, float]:
    """The shape of answer the question asks for and its probability; None without the shape model."""
    if components.shapes is None:
        return None, 0.0
    return components.shapes.shape(vector, question)


def _pick(components: Components, msg: Ask, grounding: Grounding, spans: list[Candidate], scores: list[float],
          shape: str | None, shape_probability: float, req: Request) -> tuple[str, Verdict]:
    """The answer chosen among the candidate spans (see :func:`~smallfirst.retrieval.answer_check.choose`)
    and its verdict; its features and confidence go to the ``done`` frame."""
    ranked = grounding.evidence.ranked
    sources = [h.text for h in grounding.evidence.hits]
    rules = [check_answer(msg.question, cited(c), ranked, sources).supported for c in spans]
    features = candidate_features(spans, scores, msg.question, ranked, grounding.hit_scores, shape_probability, rules)
    pick = choose(components.pick_model, features, scores, rules, shape)
    chosen = spans[pick.index]
    answer = cited(chosen)
    req.extra["check_features"] = {k: round(v, 4) for k, v in features[pick.index].items()}
    if pick.confidence is not None:
        req.extra["confidence"] = round(pick.confidence, 4)
    if pick.supported:
        return answer, Verdict(True, [], chosen.evidence)
    if not pick.vouched:
        why = f"the check cannot vouch for a choice among answers of this shape ({shape})"
    elif pick.confidence is not None:
        why = f"the pick's confidence {pick.confidence:.2f} is below the threshold"
    else:
        why = "the rules do not pass it"
    return answer, Verdict(False, [{"text": answer, "start": 0, "end": len(answer), "why": why}], chosen.evidence)
