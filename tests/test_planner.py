"""The autocomplete step planner, on hand-made job sets: no model, no event loop, no clock."""

from __future__ import annotations

from smallfirst.service.autocomplete.planner import JobView, Limits, Plan, next_step
from smallfirst.service.scheduler import Priority

LIMITS = Limits(max_rows=4, step_tokens=16, alone_step_tokens=48, standby_step_tokens=8)
NONE: frozenset[Priority] = frozenset()


def fresh(key: int, prompt_len: int, position: int = 0, slot: int | None = None) -> JobView:
    """A new request whose prompt is ``prompt_len`` tokens, ``position`` of them already cached."""
    return JobView(key, key if slot is None else slot, 1, tuple(range(1000 * key, 1000 * key + prompt_len)), position)


def decoding(key: int, pending: int = 7, position: int = 20) -> JobView:
    return JobView(key, key, 1, tuple(range(position)), position, pending=pending)


def standby(key: int, prompt_len: int, position: int = 0) -> JobView:
    return JobView(key, key, 1, tuple(range(prompt_len)), position, standby=True)


def plan(jobs: list[JobView], live: int | None = None, in_flight: frozenset[Priority] = NONE) -> Plan | None:
    return next_step(jobs, len(jobs) if live is None else live, in_flight, LIMITS)


def test_a_lone_keystroke_evaluates_its_uncached_tail_and_samples() -> None:
    step = plan([fresh(0, 30, position=27)])
    assert step is not None and step.priority == Priority.KEYSTROKE
    (row,) = step.rows
    assert (row.slot, row.start, row.tokens, row.sample, row.decoding) == (0, 27, (27, 28, 29), True, False)


def test_a_cold_prompt_alone_goes_in_chunks_of_the_alone_budget() -> None:
    (row,) = plan([fresh(0, 200)]).rows
    assert len(row.tokens) == 48 and not row.sample  # the rest comes in later steps
    (row,) = plan([fresh(0, 200, position=192)]).rows
    assert row.tokens == tuple(range(192, 200)) and row.sample


def test_with_others_waiting_the_budget_is_shared_in_order() -> None:
    step = plan([fresh(0, 10, position=0), fresh(1, 30, position=0), fresh(2, 5, position=0)])
    assert [len(row.tokens) for row in step.rows] == [10, 6]  # 16 in all; the third waits for the next step
    assert [row.sample for row in step.rows] == [True, False]


def test_a_keystroke_step_also_feeds_back_continuing_suggestions_up_to_the_row_limit() -> None:
    step = plan([fresh(0, 3, position=1), decoding(1), decoding(2), decoding(3), decoding(4)])
    assert step.priority == Priority.KEYSTROKE
    assert [(row.slot, row.decoding) for row in step.rows] == [(0, False), (1, True), (2, True), (3, True)]
    assert all(row.sample for row in step.rows)


def test_a_new_keystroke_does_not_wait_for_an_answer_priority_step_in_flight() -> None:
    step = plan([fresh(0, 3, position=2)], in_flight=frozenset({Priority.ANSWER}))
    assert step is not None and step.priority == Priority.KEYSTROKE
    assert plan([fresh(0, 3, position=2)], in_flight=frozenset({Priority.KEYSTROKE})) is None


def test_continuations_run_at_answer_priority_and_only_with_nothing_in_flight() -> None:
    step = plan([decoding(0, pending=5, position=12)])
    assert step.priority == Priority.ANSWER
    (row,) = step.rows
    assert (row.start, row.tokens, row.sample, row.decoding) == (12, (5,), True, True)
    assert plan([decoding(0)], in_flight=frozenset({Priority.ANSWER})) is None
    assert plan([decoding(0)], in_flight=frozenset({Priority.KEYSTROKE})) is None


def test_a_standby_prefills_in_small_chunks_only_when_nobody_waits() -> None:
    (row,) = plan([standby(0, 40, position=10)]).rows
    assert (row.start, len(row.tokens), row.sample) == (10, 8, False)
    step = plan([standby(0, 40), decoding(1)])
    assert [row.slot for row in step.rows] == [1]  # the suggestion goes first
    step = plan([standby(0, 40), fresh(1, 4)])
    assert step.priority == Priority.KEYSTROKE and [row.slot for row in step.rows] == [1]


def test_a_standby_keeps_its_last_token_for_the_request_and_reports_when_filled() -> None:
    (row,) = plan([standby(0, 40, position=35)]).rows
    assert row.tokens == tuple(range(35, 39))  # token 39 is left to evaluate with the typed text
    filled = plan([standby(0, 40, position=39)])
    assert filled is not None and filled.rows == () and filled.filled == (0,)


def test_rows_carry_the_slot_epoch_they_were_planned_in() -> None:
    job = JobView(0, 3, 9, tuple(range(10)), 4)
    (row,) = plan([job]).rows
    assert (row.slot, row.epoch, row.start) == (3, 9, 4)


def test_nothing_to_do_plans_nothing() -> None:
    assert plan([]) is None
    assert plan([], live=2) is None  # jobs still preparing or in a step: wait for them


def test_a_suggestion_whose_first_text_has_not_gone_out_goes_on_at_keystroke_priority() -> None:
    """Its first tokens only spelled out what token healing took off the prompt: the user is still
    waiting, so the next token goes first, ahead of other suggestions, and carries the heal left."""
    waiting = JobView(1, 1, 1, tuple(range(20)), 20, pending=9, heal=b"ne", shown=False)
    step = plan([decoding(0), waiting])
    assert step is not None and step.priority == Priority.KEYSTROKE
    assert [row.key for row in step.rows] == [1, 0] and step.rows[0].heal == b"ne"
    step = plan([waiting], in_flight=frozenset({Priority.ANSWER}))  # it does not wait for an answer step
    assert step is not None and step.priority == Priority.KEYSTROKE
