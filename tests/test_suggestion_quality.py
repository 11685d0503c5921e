"""What keeps a suggestion worth a Tab, without the model: junk caught before it is shown, and
the continuation copied from a passage where the last words typed stand in it. Made-up text only."""

from __future__ import annotations

from smallfirst.service.autocomplete.copying import copied as copied_from, lookup_key
from smallfirst.service.autocomplete.junk import RUN_CHARS, JunkFilter
from smallfirst.service.autocomplete.suggestion import SuggestionCutter
from tests.test_suggestion import run

WORDY = "The router sends hard questions to"
PASSAGE = ("Harbor Lighthouse Museum. The museum opens at nine and closes at five, except on Mondays. "
           "Guided tours leave from the lamp room every hour; the last tour starts at four.")


def finish(cutter: SuggestionCutter, pieces: list[str]) -> str:
    """Everything the cutter sends for ``pieces``, the end of the text included."""
    return run(cutter, pieces)[0]


def test_a_run_of_digits_where_the_text_is_words_is_never_shown() -> None:
    cutter = SuggestionCutter(WORDY, 16)
    assert finish(cutter, ["1", "0", "0", "0", "0", "0", "0", "0", "0", "0"]) == ""
    assert cutter.dropped in ("run", "repeat")
    dotted = SuggestionCutter(WORDY, 16)
    assert finish(dotted, ["1", ".", "1", ".", "1", ".", "1", ".", "1", "."]) == "" and dotted.dropped is not None
    mixed = SuggestionCutter(WORDY, 16)  # good words first: they stay, the run after them goes
    assert finish(mixed, [" the", " large", " model", " 1", "2345", "6789"]) == " the large model"
    assert mixed.dropped == "run"


def test_figures_that_belong_are_shown() -> None:
    assert finish(SuggestionCutter("Version", 16), [" 3", ".", "5", " is", " out", "."]) == " 3.5 is out."
    year = SuggestionCutter("George Orwell published the novel in", 16)
    assert finish(year, [" 1", "9", "4", "9"]) == " 1949" and year.dropped is None
    # Where the typed text is figures itself, figures are what it needs.
    numbers = SuggestionCutter("Totals: 1204, 3391, 5512, 8830,", 16)
    assert finish(numbers, [" 1", "0", "2", "9", "4", "1", "7"]) == " 1029417" and numbers.dropped is None
    assert JunkFilter(WORDY).judge(" 2049.", final=True).reason is None
    assert JunkFilter(WORDY).judge(" 2468024"[:RUN_CHARS + 1], final=True).reason == "run"


def test_a_repeated_pattern_is_dropped_whole() -> None:
    cutter = SuggestionCutter(WORDY, 16)
    # The first time is plain text and goes out; from the second time on it is held, then dropped.
    assert finish(cutter, [" ab", " ab", " ab", " ab", " ab"]) == " ab" and cutter.dropped == "repeat"
    stutter = SuggestionCutter(WORDY, 16)
    assert finish(stutter, [" the", " model", " the", " the", " the", " the"]) == " the model the"
    assert stutter.dropped == "repeat"
    assert finish(SuggestionCutter(WORDY, 16), [" a", " bookkeeper", " will", " call", "."]) == " a bookkeeper will call."


def test_the_passage_opening_suggested_as_a_continuation_is_dropped() -> None:
    cutter = SuggestionCutter(WORDY, 16, passage=PASSAGE)
    assert finish(cutter, [" Harbor", " Lighthouse", " Museum", "."]) == "" and cutter.dropped == "heading"
    # A suggestion that merely starts like the opening goes out once it parts from it.
    parted = SuggestionCutter(WORDY, 16, passage=PASSAGE)
    assert finish(parted, [" Harbor", " staff", " first", "."]) == " Harbor staff first." and parted.dropped is None


def copied(typed: str, passages: list[str]) -> str | None:
    found = copied_from(typed, passages)
    return found[1] if found is not None else None


def test_the_last_words_typed_are_looked_up_with_the_word_in_progress() -> None:
    assert lookup_key("The mu") is None  # too little typed
    assert lookup_key("The museum opens at ") == "museum opens at "
    assert lookup_key("Guided tours le") == "Guided tours le"
    assert lookup_key("so it is at a") == "so it is at a"  # too short a key: the words before are taken too
    assert lookup_key("it is at a") is None


def test_a_passage_holding_the_typed_words_gives_its_continuation_to_the_clause_end() -> None:
    assert copied("Visitors should know that the museum opens at ", [PASSAGE]) == "nine and closes at five,"
    assert copied("Visitors should know that the museum opens at ni", [PASSAGE]) == "ne and closes at five,"
    assert copied("Visitors should know that the museum opens at", [PASSAGE]) == " nine and closes at five,"
    assert copied("guided TOURS LEAVE from the", [PASSAGE]) == " lamp room every hour;"  # case aside
    assert copied("A sentence the passage does not hold", [PASSAGE]) is None
    assert copied("the last tour starts at four.", [PASSAGE]) is None  # nothing follows


def test_of_several_occurrences_the_one_agreeing_with_more_typed_text_wins() -> None:
    passage = "The red door opens at noon. The blue door opens at dawn."
    assert copied("Round the back, the blue door opens at ", [passage]) == "dawn."
    assert copied("Round the back, the red door opens at ", [passage]) == "noon."
    other = "In winter the blue door opens at nine."
    assert copied_from("In winter the blue door opens at ", [passage, other]) == (1, "nine.")
    assert copied_from("the blue door opens at ", [passage, other]) == (0, "dawn.")  # a tie: the first


def test_the_healing_index_allows_tokens_that_spell_out_what_was_taken_off() -> None:
    from smallfirst.service.llm.slots import PrefixIndex

    vocab = [b"", b" ", b" t", b" tr", b" tra", b" track", b" train", b" the", b"tra", b"ck", b"1", b" 1"]
    index = PrefixIndex(vocab)
    assert {vocab[i] for i in index.allowed(b" tra")} == {b" tra", b" track", b" train"}  # it, and longer ones
    # Spelled over several tokens: also the first token of its own tokenization, no other start of it.
    assert {vocab[i] for i in index.allowed(b" trac", start=3)} == {b" tr", b" track"}
    assert {vocab[i] for i in index.allowed(b" trac", start=7)} == {b" track"}  # " the" does not start it
    # After a space: a word that starts with it, never the bare space (the tokenizer joins it to the word).
    assert {vocab[i] for i in index.allowed(b" ")} == {b" t", b" tr", b" tra", b" track", b" train", b" the", b" 1"}
    assert list(index.allowed(b"zz")) == []
    assert index.allowed(b" tra") is index.allowed(b" tra")  # computed once
    # A word may be taken off whole only where some token could go on past all of it.
    assert index.extends(b" tra") and index.extends(b" t") and index.extends(b"")
    assert not index.extends(b" track") and not index.extends(b" trak") and index.extends(b" trai") and not index.extends(b"ck")
