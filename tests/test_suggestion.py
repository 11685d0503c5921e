"""Where a suggestion ends, and which typed text becomes a grounding query."""

from __future__ import annotations

from smallfirst.service.autocomplete.grounding import grounding_query
from smallfirst.service.autocomplete.suggestion import WORD_GRACE, SuggestionCutter


def run(cutter: SuggestionCutter, pieces: list[str]) -> tuple[str, int]:
    """Feed pieces until the cutter stops; the text sent and how many pieces it consumed. Pieces
    that run out end the text, as an end-of-text token does (what was held back goes out)."""
    sent = ""
    for n, piece in enumerate(pieces, 1):
        text, stop = cutter.feed(piece)
        sent += text
        if stop:
            return sent, n
    return sent + cutter.close(), len(pieces)


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
    letters = list("bcdefghijklmnopqrstu")  # a word that never ends, and never repeats itself
    sent, used = run(endless, [" a"] + letters)
    assert used == 1 + WORD_GRACE and sent == " a" + "".join(letters[:WORD_GRACE])


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


def test_a_tag_is_cut_where_it_starts_even_mid_piece() -> None:
    cutter = SuggestionCutter("To make answers faster, the service keeps the", 16)
    assert run(cutter, [" most", " recent <", "strong", ">", "question"]) == (" most recent ", 2)
    assert cutter.finish == "stop"
    closing = SuggestionCutter("The museum opens", 16)
    assert run(closing, [" at", " nine", "</", "p", ">"]) == (" at nine", 3)
    assert closing.finish == "stop"


def test_a_suggestion_that_starts_with_markup_sends_nothing() -> None:
    for pieces in ([" <", "strong", ">"], [" ", " **", "question"], ["<br>"]):
        cutter = SuggestionCutter("the service keeps the ", 16)
        assert run(cutter, pieces) == ("", 2 if pieces[0] == " " else 1)
        assert cutter.finish == "stop"


def test_markdown_emphasis_is_cut() -> None:
    assert run(SuggestionCutter("The queue holds", 16), [" the", " *", "last*", " one"])[0] == " the "
    assert run(SuggestionCutter("The queue holds", 16), [" the", " __", "last", "__"])[0] == " the "
    closing = SuggestionCutter("The queue holds", 16)  # a "_" after a word that no word follows
    assert run(closing, [" the", " last", "_", " one"]) == (" the last", 4)
    assert closing.finish == "stop"


def test_an_entity_is_held_across_pieces_and_cut() -> None:
    cutter = SuggestionCutter("Salt", 16)
    assert cutter.feed(" and pepper &") == (" and pepper ", False)  # the "&" waits for the next piece
    assert cutter.feed("amp;") == ("", True)
    assert cutter.sent == " and pepper " and cutter.finish == "stop"
    numeric = SuggestionCutter("Salt", 16)
    assert run(numeric, [" costs", " 3 &", "#", "8364;"]) == (" costs 3 ", 3)


def test_a_plain_ampersand_still_goes_out() -> None:
    cutter = SuggestionCutter("Salt", 16)
    assert cutter.feed(" &") == ("", False)
    assert cutter.feed(" pepper") == (" & pepper", False)
    assert run(SuggestionCutter("Salt", 16), [" and", " pepper", " &", " vinegar", "."])[0] == " and pepper & vinegar."
    assert run(SuggestionCutter("Salt", 16), [" and", " pepper", " &", "\nMore"])[0] == " and pepper &"


def test_an_underscore_inside_a_word_is_kept() -> None:
    sent, _ = run(SuggestionCutter("Set the variable", 16), [" SMALLFIRST", "_", "DATA", "_DIR", " to", " a", " folder", "."])
    assert sent == " SMALLFIRST_DATA_DIR to a folder."
    dunder = SuggestionCutter("Call", 16)
    assert run(dunder, [" snake", "__", "case", " first", "."])[0] == " snake__case first."
    mid_word = SuggestionCutter("Set SMALLFIRST", 16)  # the word before the "_" is in the typed text
    assert run(mid_word, ["_", "PORT", " first", "."])[0] == "_PORT first."


def test_markup_the_user_typed_is_allowed() -> None:
    html = SuggestionCutter("Wrap the word in <em>", 16)
    assert run(html, [" tags", " like", " <", "strong", ">", " too", "."])[0] == " tags like <strong> too."
    entity = SuggestionCutter("Write AT&T as AT&", 16)
    assert run(entity, ["amp", ";", "T", "."])[0] == "amp;T."
    emphasis = SuggestionCutter("Some *words* and", 16)
    assert run(emphasis, [" **", "more", "**", "."])[0] == " **more**."
    typed_star_only = SuggestionCutter("Some *words* and", 16)  # only the characters typed
    assert run(typed_star_only, [" more", " <", "b", ">"])[0] == " more "


def test_a_remainder_of_only_whitespace_sends_nothing() -> None:
    cutter = SuggestionCutter("the service keeps the", 16)
    assert run(cutter, [" ", "  ", " <", "strong", ">"]) == ("", 3)
    assert cutter.finish == "stop"
    held = SuggestionCutter("the service keeps the", 16)
    assert run(held, [" ", " &", "nbsp;", " question"]) == ("", 3)
    assert held.finish == "stop"


def test_grounding_queries_change_only_at_word_boundaries() -> None:
    assert grounding_query("The light") is None  # two complete words at most
    assert grounding_query("The lighthouse keeper li") == "The lighthouse keeper"
    assert grounding_query("The lighthouse keeper lives") == "The lighthouse keeper"
    assert grounding_query("The lighthouse keeper lives ") == "The lighthouse keeper lives"
    long = "word " * 200 + "end "
    query = grounding_query(long)
    assert query is not None and query.endswith("end") and len(query) <= 300
