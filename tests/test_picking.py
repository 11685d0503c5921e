"""Answers picked from the evidence: the candidate spans of each shape, on made-up documents (pure: no model)."""

from __future__ import annotations

import numpy as np
import pytest

from smallfirst.retrieval.answer_check import Pick, PickModel, choose
from smallfirst.retrieval.evidence import find_evidence
from smallfirst.retrieval.picking import CANDIDATE_FEATURES, candidate_features, candidates, cited
from smallfirst.retrieval.store import Hit
from smallfirst.retrieval.support import numbers

HARBOUR = """Harbour office › Moorings

The visitor pontoon holds twelve boats at most. Boats longer than 14 metres moor at the outer wall.
The harbour master answers on radio channel 16 and the office opens at 07:30.
The log of arrivals lives in /srv/harbour/arrivals.log and is kept for 90 days.
"""
BEACON = """Beacon control › Commands

The beacon_reset() call clears the lamp's fault counter. Use set_flash_rate() to change how often the lamp flashes.
Running the lamp on the spare battery is not supported, because the spare cannot drive the lens motor.
"""


def hit(text: str, score: float = 0.6) -> Hit:
    return Hit(id="x", score=score, doc_id="doc.md", doc_version="v", chunk_index=0, title="doc", uri="", text=text)


def spans(shape: str, question: str, *texts: str) -> list[str]:
    evidence = find_evidence(question, [hit(t) for t in texts], None)
    sources = "\n".join(texts)
    return [c.text for c in candidates(shape, question, evidence.ranked, sources)]


def test_a_value_question_gets_the_values_of_its_best_sentences_with_their_units() -> None:
    found = spans("value", "How long are arrival records retained at the harbour?", HARBOUR)
    assert "90 days" in found
    assert "/srv/harbour/arrivals.log" in spans("value", "Where is the list of arriving boats stored?", HARBOUR)


def test_a_count_question_gets_counts_and_never_a_value_the_question_gave() -> None:
    found = spans("count", "How many boats fit on the visitor pontoon at once?", HARBOUR)
    assert "twelve" in found
    assert all(n not in found for n in ("14 metres", "07:30", "/srv/harbour/arrivals.log"))
    assert "16" not in spans("value", "Which boats longer than 16 metres moor outside?", "Boats longer than 16 metres moor at the wall.")


def test_a_name_question_gets_the_names_its_sentences_give_that_it_did_not() -> None:
    found = spans("name", "Which call resets the counter of lamp faults?", BEACON)
    assert found[0] == "beacon_reset()" and "set_flash_rate()" in found


def test_a_yes_no_question_gets_yes_and_no_with_the_deciding_sentence() -> None:
    evidence = find_evidence("Can the lamp run from the spare battery?", [hit(BEACON)], None)
    options = candidates("yesno", "Can the lamp run from the spare battery?", evidence.ranked, BEACON)
    assert [c.text for c in options] == ["Yes", "No"]
    assert "spare battery is not supported" in cited(options[1]) and cited(options[1]).startswith("No. ")


def test_a_description_question_gets_whole_sentences_that_say_something_new() -> None:
    found = spans("description", "What does set_flash_rate() do?", BEACON)
    assert any("change how often the lamp flashes" in s for s in found)
    assert all(len(s.split()) >= 5 for s in found)


def test_no_candidate_without_a_span_of_the_shape() -> None:
    assert spans("value", "How long is the lens motor warranty?", "The lens motor is made in Norway by hand.") == []


def test_a_picked_value_is_always_held_by_the_sentence_it_cites() -> None:
    questions = ("How long are arrival records kept?", "When does the harbour office open?",
                 "How long may a boat at the pontoon be?", "Which radio channel does the harbour master use?")
    for question in questions:
        evidence = find_evidence(question, [hit(HARBOUR), hit(BEACON)], None)
        for candidate in candidates("value", question, evidence.ranked, HARBOUR + BEACON):
            answer = cited(candidate)
            sentence = f"{candidate.evidence.sentence.label}\n{candidate.evidence.text}"
            assert candidate.text in sentence
            held = {n.key for n in numbers(sentence)}
            assert all(n.key in held for n in numbers(answer.rsplit(" [", 1)[0])), (answer, sentence)


def test_an_unknown_shape_is_an_error() -> None:
    with pytest.raises(ValueError):
        candidates("essay", "Why?", [], "")


def _features(question: str, text: str, scores: list[float], shape: str = "value") -> tuple[list, list[dict]]:
    evidence = find_evidence(question, [hit(text)], None)
    options = candidates(shape, question, evidence.ranked, text)
    assert len(options) == len(scores), [c.text for c in options]
    return options, candidate_features(options, scores, question, evidence.ranked, [0.7, 0.4], 0.9, [True] * len(options))


def test_candidate_features_read_the_small_models_scores_and_where_the_span_stands() -> None:
    question = "Which radio channel does the harbour master answer on?"
    count = len(candidates("value", question, find_evidence(question, [hit(HARBOUR)], None).ranked, HARBOUR))
    options, features = _features(question, HARBOUR, [-0.5, -2.0] + [-3.0] * (count - 2))
    assert all(list(f) == list(CANDIDATE_FEATURES) for f in features)
    assert features[0]["lm_best"] == 1.0 and features[1]["lm_gap"] == pytest.approx(1.5)
    by_text = {c.text: f for c, f in zip(options, features)}
    assert by_text["16"]["span_near_question"] > by_text["07:30"]["span_near_question"]  # "channel 16", beside the asked word
    assert by_text["90 days"]["kind_number_unit"] == 1.0 and by_text["16"]["kind_number"] == 1.0


def test_yes_or_no_features_see_a_negated_sentence() -> None:
    question = "Can the lamp run from the spare battery?"
    _, features = _features(question, BEACON, [-1.0, -1.2], "yesno")
    assert features[0]["negated_sentence"] == features[1]["negated_sentence"] == 1.0
    assert features[0]["yes_negated"] == features[1]["no_negated"] == 1.0
    assert features[0]["no_negated"] == features[1]["yes_negated"] == 0.0


def _model(feature: str, weight: float, threshold: float) -> PickModel:
    weights = np.zeros(len(CANDIDATE_FEATURES))
    weights[CANDIDATE_FEATURES.index(feature)] = weight
    return PickModel(weights, 0.0, np.zeros(len(CANDIDATE_FEATURES)), np.ones(len(CANDIDATE_FEATURES)), threshold)


def _harbour_channel() -> tuple[list, list[dict], list[float]]:
    """The value candidates of a channel question, equal for the small model, with their features."""
    question = "Which radio channel does the harbour master answer on?"
    count = len(candidates("value", question, find_evidence(question, [hit(HARBOUR)], None).ranked, HARBOUR))
    scores = [-1.0] * count
    options, features = _features(question, HARBOUR, scores)
    return options, features, scores


def test_the_pick_model_chooses_the_likeliest_right_and_supports_it_only_at_its_threshold() -> None:
    options, features, scores = _harbour_channel()
    count = len(options)
    near = _model("span_near_question", 4.0, 0.6)
    pick = choose(near, features, scores, [True] * count)
    assert options[pick.index].text == "16" and pick.supported and pick.confidence > 0.6
    assert not choose(_model("span_near_question", 4.0, 0.999), features, scores, [True] * count).supported


def test_a_shape_the_model_cannot_vouch_for_is_never_supported_however_sure_the_pick() -> None:
    options, features, scores = _harbour_channel()
    count = len(options)
    near = _model("span_near_question", 4.0, 0.6)
    doubtful = PickModel(near.weights, near.bias, near.mean, near.scale, near.threshold, frozenset({"value"}))
    assert choose(doubtful, features, scores, [True] * count, "name").supported
    pick = choose(doubtful, features, scores, [True] * count, "value")
    assert options[pick.index].text == "16" and not pick.supported and not pick.vouched and pick.confidence == 0.0
    alone = choose(doubtful, features[pick.index:pick.index + 1], scores[:1], [True], "value")
    assert alone.supported and alone.vouched  # one candidate is no choice


def test_without_the_model_the_small_models_likeliest_is_chosen_and_the_rules_decide() -> None:
    features = [{}, {}]
    assert choose(None, features, [-2.0, -0.5], [True, False]) == Pick(1, None, False)
    assert choose(None, features, [-0.1, -0.5], [True, False]) == Pick(0, None, True)


RELAY = """Relay station › Requirements

Building the relay needs at least version 3.2.14 of libfoghorn. Its gain can be set from 2 to 40 in steps of two.
The panel speaks ISO-8859-1 only. A restart takes 5-10 seconds.
-Q num  Number of lamps kept quiet at night.
The relay speaks the Northern Light Protocol to its lamps. See RFC 4242 for the framing.
"""


def test_versions_ranges_and_hyphenated_values_are_candidates_whole() -> None:
    assert "3.2.14" in spans("value", "What is the oldest libfoghorn the relay can be built against?", RELAY)
    assert "2 to 40" in spans("value", "Within what limits may the relay's gain be set?", RELAY)
    assert "5-10 seconds" in spans("value", "How long does the relay need to restart?", RELAY)
    assert "ISO-8859-1" in spans("value", "In what character encoding does the panel talk?", RELAY)


def test_a_name_question_gets_one_letter_flags_and_capitalised_names() -> None:
    assert "-Q" in spans("name", "Which flag chooses how many lamps stay dark at night?", RELAY)
    assert "Northern Light Protocol" in spans("name", "What does the relay use to talk to its lamps?", RELAY)
    found = spans("name", "Which RFC describes how the relay frames its messages?", RELAY)
    assert "RFC 4242" in found  # without the sentence's first word, "See"


def test_span_context_features_see_the_question_words_beside_a_span() -> None:
    question = "Which radio channel does the harbour master answer on?"
    count = len(candidates("value", question, find_evidence(question, [hit(HARBOUR)], None).ranked, HARBOUR))
    options, features = _features(question, HARBOUR, [-1.0] * count)
    by_text = {c.text: f for c, f in zip(options, features)}
    assert by_text["16"]["question_within_3"] > by_text["07:30"]["question_within_3"]
    assert by_text["16"]["span_position"] < by_text["07:30"]["span_position"]
    assert by_text["16"]["span_in_question"] == 0.0 and by_text["90 days"]["span_words"] == 2.0


def test_a_question_without_content_words_still_gets_features() -> None:
    question = "What is it?"
    evidence = find_evidence(question, [hit(HARBOUR)], None)
    options = candidates("value", question, evidence.ranked, HARBOUR)
    assert options
    features = candidate_features(options, [-1.0] * len(options), question, evidence.ranked, [0.7], 0.5, [False] * len(options))
    assert all(f["question_within_3"] == f["question_within_8"] == f["span_near_question"] == 0.0 for f in features)
