"""Where a suggestion ends, and which typed text becomes a grounding query."""

from __future__ import annotations

from service.grounding import grounding_query
from service.suggestion import WORD_GRACE, SuggestionCutter


def run(cutter: SuggestionCutter, pieces: list[str]) -> tuple[str, int]:
    """Feed pieces until the cutter stops; the text sent and how many pieces it consumed."""
    sent = ""
    for n, piece in enumerate(pieces, 1):
        text, stop = cutter.feed(piece)
        sent += text
        if stop:
            return sent, n
    return sent, len(pieces)


def test_stops_at_a_line_break_without_sending_it() -> None:
    cutter = SuggestionCutter("The museum opens", 8)
    assert run(cutter, [" at", " nine", "\nNext", " line"]) == (" at nine", 3)
    assert cutter.finish == "stop"


def test_stops_after_a_sentence_ends() -> None:
    cutter = SuggestionCutter("The museum opens", 16)
    assert run(cutter, [" at", " nine", ".", " It", " closes"]) == (" at nine.", 3)
    assert cutter.finish == "stop"


def test_a_decimal_point_does_not_end_the_suggestion() -> None:
    assert run(SuggestionCutter("Version", 16), [" 3", ".", "5", " is", " out", "."])[0] == " 3.5 is out."


def test_abbreviations_do_not_end_the_suggestion() -> None:
    assert run(SuggestionCutter("It opens at", 16), [" 10", " a", ".", "m", ".", " daily", ".", " It"]) == (" 10 a.m. daily.", 7)
    assert run(SuggestionCutter("Use a flag,", 16), [" e", ".", "g", ".", " the", " flag", ".", " It"]) == (" e.g. the flag.", 7)


def test_whitespace_alone_is_never_sent() -> None:
    cutter = SuggestionCutter("The museum opens", 8)
    assert run(cutter, [" ", "  ", "\n"]) == ("", 3)
    leading = SuggestionCutter("The museum opens", 8)
    assert run(leading, [" ", " at", " nine", "\n"])[0] == "  at nine"  # held, then sent with the first word


def test_max_tokens_finishes_the_word_in_progress() -> None:
    cutter = SuggestionCutter("The", 2)
    assert run(cutter, [" light", "house", " keeper", " lives"]) == (" lighthouse", 3)
    assert cutter.finish == "length"
    endless = SuggestionCutter("The", 1)
    sent, used = run(endless, [" a"] + ["b"] * 20)
    assert used == 1 + WORD_GRACE and sent == " a" + "b" * WORD_GRACE


def test_max_tokens_stops_at_the_next_word_start() -> None:
    cutter = SuggestionCutter("The", 2)  # a word may go on, so one more piece is looked at
    assert run(cutter, [" light", " keeper", " lives"]) == (" light keeper", 3)
    after_space = SuggestionCutter("The", 2)
    assert run(after_space, [" light", "house ", "keeper"]) == (" lighthouse ", 2)


def test_copying_the_typed_text_is_cut_off() -> None:
    typed = "The scheduler runs every model step on one thread. The scheduler"
    cutter = SuggestionCutter(typed, 16)
    sent, _ = run(cutter, [" runs", " every", " model", " step", " on", " one", " thread", "."])
    assert sent == " runs"  # stopped once text and suggestion repeated 24 characters of the text
    assert cutter.finish == "stop"
    fresh = SuggestionCutter(typed, 16)
    assert run(fresh, [" also", " orders", " requests", "."])[0] == " also orders requests."


def test_grounding_queries_change_only_at_word_boundaries() -> None:
    assert grounding_query("The light") is None  # two complete words at most
    assert grounding_query("The lighthouse keeper li") == "The lighthouse keeper"
    assert grounding_query("The lighthouse keeper lives") == "The lighthouse keeper"
    assert grounding_query("The lighthouse keeper lives ") == "The lighthouse keeper lives"
    long = "word " * 200 + "end "
    query = grounding_query(long)
    assert query is not None and query.endswith("end") and len(query) <= 300
