"""Stop strings are cut, and text that may begin one is held back until it is decided."""

from smallfirst.service.llm.base import StopMatcher


def feed_all(pieces: list[str], stops: tuple[str, ...]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces)
    return out + m.flush(), m.stopped


def test_stop_split_across_pieces_is_cut() -> None:
    assert feed_all(["It closes at 5", ".\nQues", "tion: next"], ("\nQuestion:",)) == ("It closes at 5.", True)


def test_partial_match_is_released_when_it_diverges() -> None:
    m = StopMatcher(("\nQuestion:",))
    assert m.feed("a\nQue") == "a"
    assert m.feed("ue") == "\nQueue"


def test_no_stop_flushes_everything() -> None:
    assert feed_all(["abc", "\n"], ("\nQuestion:",)) == ("abc\n", False)


def test_nothing_after_a_stop() -> None:
    m = StopMatcher(("###",))
    assert m.feed("x###y") == "x"
    assert m.feed("more") == "" and m.flush() == ""
