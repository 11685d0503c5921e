"""Evidence scoring and the support check, on real document text (pure: no model, except the one
test marked slow that uses the embedder's token vectors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smallfirst.retrieval.evidence import find_evidence, split_sentences
from smallfirst.retrieval.store import Hit
from smallfirst.retrieval.expectation import expected, names_given
from smallfirst.retrieval.support import check_answer, claims, numbers

FERRY = (Path(__file__).parent / "fixtures" / "trust" / "ferry.md").read_text()
SETTINGS = """Configuration › Limits

max_file_mb (float)
Files larger than this many megabytes are skipped by ingest. The default is 50.

complete_slots (int)
Autocomplete slots in the shared context, one per recent typist. The default is 8.

answer_queue_limit (int)
Answers waiting for the model before new ones get busy. The default is 16.
"""


def hit(text: str, title: str = "doc", score: float = 0.6) -> Hit:
    return Hit(id="x", score=score, doc_id="doc.md", doc_version="v", chunk_index=0, title=title, uri="", text=text)


def evidence_for(question: str, *texts: str):
    return find_evidence(question, [hit(t) for t in texts], None)


def test_sentences_keep_offsets_labels_and_abbreviations() -> None:
    text = "Intro › Setup\n\nport (int)\nThe port, e.g. 8000, is where it listens. It must be free.\n"
    sentences = split_sentences(text)
    assert [s.text for s in sentences] == ["port (int)", "The port, e.g. 8000, is where it listens.", "It must be free."]
    for s in sentences:
        assert text[s.start:s.end] == s.text
    assert sentences[1].label == sentences[2].label == "port (int)" and sentences[2].previous == sentences[1].text


def test_evidence_offsets_point_at_the_answering_sentence() -> None:
    found = evidence_for("What is the default number of autocomplete slots?", SETTINGS, FERRY)
    best = found.best[0]
    assert best is not None
    assert SETTINGS[best.start:best.end] == best.text
    assert "The default is 8." in best.text  # scored with its term line, not the neighbouring settings'
    assert best.sentence.label == "complete_slots (int)"
    assert found.ranked[0] == best and found.best[1] is not None and found.best[1].score < best.score


def test_evidence_windows_number_sources_in_hit_order() -> None:
    found = evidence_for("When does the first ferry leave on Sundays?", SETTINGS, FERRY)
    windows = found.windows(2)
    assert windows.startswith("[2] doc\n") and "[1]" not in windows  # numbered as in `sources`
    assert "Timetable\nThe first ferry leaves at 06:40 on weekdays and at 08:15 on Sundays." in windows


def test_a_sentence_of_a_better_chunk_outranks_the_same_words_in_a_worse_one() -> None:
    question = "When does the first ferry leave on Sundays?"
    sentence = "The first ferry leaves at 08:15 on Sundays."
    far, near = hit(f"Timetable\n{sentence}", score=0.3), hit(f"Timetable\n{sentence}", score=0.8)
    found = find_evidence(question, [far, near], None)  # listed far first: only the chunks' own scores tell them apart
    assert found.ranked[0].source == 1 and found.ranked[0].score > found.ranked[1].score
    assert 0.0 < found.ranked[1].score < found.ranked[0].score <= 1.0


def test_a_prompt_block_names_the_page_and_the_nearest_heading_only() -> None:
    text = "Ferries — Harbour guide › Ferries › Timetable\nThe first ferry leaves at 08:15 on Sundays."
    hits = [hit(text, title="Ferries — Harbour guide"), hit("Opening hours are posted.", title="Museum — Harbour guide")]
    found = find_evidence("When does the first ferry leave on Sundays?", hits, None)
    assert found.ranked[0].sentence.label == "Ferries — Harbour guide › Ferries › Timetable"  # whole, for the check
    assert found.windows(1) == "[1] Ferries\nTimetable\nThe first ferry leaves at 08:15 on Sundays."
    alone = find_evidence("When does the first ferry leave on Sundays?", hits[:1], None)  # one title: no site to tell
    assert alone.windows(1).startswith("[1] Ferries — Harbour guide\nTimetable\n")


def test_numbers_are_compared_by_value_and_unit() -> None:
    keys = [c.key for c in numbers("4MB, 4 MB, four megabytes, 06:40, 1,000 tokens, twelve")]
    assert keys == [(4.0, "mb")] * 3 + [(400, "time"), (1000.0, "token"), (12.0, None)]
    assert [c.text for c in claims("Set `SMALLFIRST_PORT` or call os.path.join() with --depth 1")][:3] == [
        "SMALLFIRST_PORT", "os.path.join()", "--depth"]


def test_the_right_value_beside_its_subject_is_supported() -> None:
    question = "How many autocomplete slots are there by default?"
    found = evidence_for(question, SETTINGS)
    verdict = check_answer(question, "There are 8 autocomplete slots by default [1].", found.ranked, [SETTINGS])
    assert verdict.supported, verdict.unsupported


def test_a_neighbouring_settings_value_is_not_supported() -> None:
    question = "How many autocomplete slots are there by default?"
    found = evidence_for(question, SETTINGS)
    verdict = check_answer(question, "The default is 16 [1].", found.ranked, [SETTINGS])  # 16 is in the sources, elsewhere
    assert not verdict.supported
    assert "beside what the question asks" in verdict.unsupported[0]["why"]


def test_a_number_absent_from_the_sources_is_flagged_with_its_span() -> None:
    question = "How many minutes does the ferry crossing take?"
    answer = "The crossing takes 10 minutes."
    verdict = check_answer(question, answer, evidence_for(question, FERRY).ranked, [FERRY])
    assert not verdict.supported
    span = verdict.unsupported[0]
    assert answer[span["start"]:span["end"]] == "10 minutes" and "not in the sources" in span["why"]


def test_a_time_from_another_sentence_is_not_supported() -> None:
    question = "When does the first ferry leave on Sundays?"
    found = evidence_for(question, FERRY)
    assert check_answer(question, "It leaves at 08:15 on Sundays.", found.ranked, [FERRY]).supported
    assert not check_answer(question, "The first ferry leaves on Sundays at 19:30.", found.ranked, [FERRY]).supported


def test_a_fluent_paraphrase_with_nothing_from_the_sources_is_not_supported() -> None:
    question = "Where does the harbor ferry leave from?"
    found = evidence_for(question, FERRY)
    assert check_answer(question, "It leaves from pier seven, by the fish market [1].", found.ranked, [FERRY]).supported
    verdict = check_answer(question, "It departs from the main railway station downtown.", found.ranked, [FERRY])
    assert not verdict.supported


SCHEDULING = """Scheduling › Two cores

On a machine with two cores, the model and the embedder compete for the same cores.
A waiting answer step is passed over by at most two keystroke steps in a row, then runs (a keystroke may then wait for one answer step, 15 to 35 milliseconds).

Lamp › First warm-up

The first lamp warm-up heats the mantle from cold and takes about six and a half minutes on two cores.
"""


def test_a_value_said_of_another_subject_is_not_supported() -> None:
    """"The first lamp warm-up takes 15 to 35 milliseconds": the value stands in the sources, but in a
    sentence about keystrokes, and nothing there is about a lamp warm-up."""
    question = "How long does the first lamp warm-up take on two cores?"
    texts = SCHEDULING.split("Lamp ›")
    texts[1] = "Lamp ›" + texts[1]
    found = evidence_for(question, texts[0])  # the lamp section was not retrieved
    verdict = check_answer(question, "The first lamp warm-up takes 15 to 35 milliseconds.", found.ranked, [texts[0]])
    assert not verdict.supported
    found = evidence_for(question, *texts)
    right = "The first lamp warm-up takes about six and a half minutes [2]."
    assert check_answer(question, right, found.ranked, texts).supported
    # The words that say what kind of thing answers it do not count as its subject.
    question = "Which file formats can the inkwell editor import?"
    source = "Import › Formats\nOrg, CSV and plain text are read; anything else is skipped."
    found = evidence_for(question, source)
    assert check_answer(question, "The files it reads are Org, CSV and plain text.", found.ranked, [source]).supported


def test_a_refusal_is_not_an_answer() -> None:
    question = "Where does the harbor ferry leave from?"
    verdict = check_answer(question, "The documents do not say.", evidence_for(question, FERRY).ranked, [FERRY])
    assert not verdict.supported


def test_an_answer_that_stops_at_its_colon_is_not_supported() -> None:
    question = "When does the first ferry leave on Sundays?"
    found = evidence_for(question, FERRY)
    verdict = check_answer(question, "The first ferry on Sundays leaves at the time below:", found.ranked, [FERRY])
    assert not verdict.supported and verdict.unsupported[0]["why"] == "the answer stops before what it introduces"
    verdict = check_answer(question, "The first ferry on Sundays leaves at 08:15: [1]", found.ranked, [FERRY])
    assert verdict.supported  # a colon before its citation ends nothing


@pytest.mark.slow
def test_evidence_with_the_embedder_token_vectors(embedder) -> None:
    """The cheap semantic half: unit vectors from the real model's token embeddings."""
    vectors = embedder.token_vectors(["autocomplete slots", "Autocomplete slots in the shared context", ""])
    assert vectors.shape == (3, embedder.dimension)
    assert abs(float(vectors[0] @ vectors[0]) - 1) < 1e-5 and float(vectors[0] @ vectors[1]) > 0.5
    assert not vectors[2].any()
    found = find_evidence("What is the default number of autocomplete slots?", [hit(SETTINGS), hit(FERRY)], embedder.token_vectors)
    assert found.best[0] is not None and "The default is 8." in found.best[0].text


ITERATORS = """Spools › The spool protocol

A spool object must define __pull__(), which returns the next frame of the reel and raises
ReelEmpty when there are no more. The built-in next() calls it. Calling spool() on a reel returns a spool.

Startup › Interactive startup file

When Python runs interactively, the file named by the PYTHONSTARTUP environment variable is executed first.
The prompts are set by sys.ps1 and sys.ps2 in that file.
"""


@pytest.mark.parametrize(("question", "kind"), [
    ("Which method must a spool define to return its next frame?", "method"),
    ("What exception does mkdir raise when the folder exists?", "exception"),
    ("Which ledger function produces daily balances?", "function"),
    ("Which environment variable names the startup file?", "variable"),
    ("What data type gives fast appends at both ends?", "type"),
    ("Which HTTP header does a weather buoy use to report its battery level?", "header"),
    ("What kind of tool is Tide Clerk?", None),
    ("What kind of error does int('x') raise?", "error"),
    ("Which file formats can be ingested?", None),
    ("Which standard library module measures small code snippets?", "module"),
    ("What type of tool is Tide Clerk?", None),
    ("What type of error does int('x') raise?", "error"),
    ("What command-line option silences pip?", "option"),
    ("What is the default port?", None),
    ("With the 'replace' error handler, which character is substituted for bytes that cannot be decoded?", "character"),
    ("Which built-in gives me both the index and the value while looping?", None),  # no kind word: the shape model decides
    ("Which operator does floor division?", "operator"),
    ("Does pathlib, which module replaces os.path, support globbing?", None),  # a clause, not a lead-in
    ("How do I list a folder?", None),
])
def test_questions_that_ask_for_a_name_are_recognised(question: str, kind: str | None) -> None:
    found = expected(question)
    assert (found.kind if found else None) == kind


def test_an_answer_that_names_nothing_new_to_a_which_name_question_is_not_supported() -> None:
    question = "Which method must a spool define to return its next frame?"
    found = evidence_for(question, ITERATORS)
    assert check_answer(question, "It must define __pull__() [1].", found.ranked, [ITERATORS]).supported
    for answer in ("The next() method of the spool object [1].",  # next() is in the sources, but the question named it
                   "The spool must define a method that returns the next frame of the reel [1]."):
        verdict = check_answer(question, answer, found.ranked, [ITERATORS])
        assert not verdict.supported, answer
        assert "asks for the name of a method" in verdict.unsupported[0]["why"]


def test_an_environment_variable_question_wants_a_capitalised_name() -> None:
    question = "Which environment variable names the file of commands run when the interpreter starts interactively?"
    found = evidence_for(question, ITERATORS)
    assert check_answer(question, "PYTHONSTARTUP names that file [1].", found.ranked, [ITERATORS]).supported
    verdict = check_answer(question, "The file is named by sys.ps1 [1].", found.ranked, [ITERATORS])
    assert not verdict.supported and "environment variable" in verdict.unsupported[0]["why"]
    expectation = expected(question)
    assert expectation is not None and names_given("Each has the PYTHON_ prefix.", question, expectation, "PYTHON_") == []


def test_names_given_counts_plain_words_the_answer_calls_a_thing_of_the_asked_kind() -> None:
    question = "Which module implements ring buffers on top of plain arrays?"
    sources = "The loopq module implements ring buffers based on plain arrays."
    expectation = expected(question)
    assert expectation is not None
    assert names_given("The loopq module [1].", question, expectation, sources) == ["loopq"]
    assert names_given("The module from the tour [1].", question, expectation, sources) == []
    assert names_given("The arrays module.", question, expectation, sources) == []  # a word of the question


def test_an_answer_that_repeats_the_questions_own_names_only_restates_it() -> None:
    question = "How do I open a TCP socket for a stream?"
    sources = "Sockets › Creating one\nA TCP socket for a stream is made with socket(AF_INET, SOCK_STREAM)."
    found = evidence_for(question, sources)
    verdict = check_answer(question, "You open a TCP socket for a stream [1].", found.ranked, [sources])
    assert not verdict.supported and verdict.unsupported[0]["why"] == "the answer only restates the question"
    assert check_answer(question, "With socket(AF_INET, SOCK_STREAM) [1].", found.ranked, [sources]).supported


def test_a_keyword_argument_names_a_flag_but_not_a_function() -> None:
    sources = "Use strict=False to coerce host bits; cache_info() of an lru_cache-decorated function reports hits."
    flag_question = "What flag do I pass to ip_network so that host bits are coerced to zero?"
    flag = expected(flag_question)
    assert flag is not None and "strict=False" in names_given("The flag strict=False.", flag_question, flag, sources)
    question = "Which function of an lru_cache-decorated function reports hits and misses?"
    function = expected(question)
    assert function is not None
    assert names_given("lru_cache(maxsize=None)", question, function, sources) == []  # the question's own name, and an argument
    assert names_given("cache_info()", question, function, sources) == ["cache_info()"]


def test_a_qualified_form_of_the_questions_own_name_is_not_new() -> None:
    question = "Which built-in exception is TableFormatError a subclass of?"
    sources = "exception tide.TableFormatError(msg, row, col): subclass of ValueError with the following attributes."
    expectation = expected(question)
    assert expectation is not None
    assert names_given("tide.TableFormatError [1].", question, expectation, sources) == []
    assert names_given("ValueError [1].", question, expectation, sources) == ["ValueError"]
    module = "Which module can I import for lighthouse tables?"
    found = expected(module)
    assert found is not None and names_given("rec.boats.lighthouse [1].", module, found, "rec.boats.lighthouse") == \
        ["rec.boats.lighthouse"]  # a plain word of the question is no name it gave


def test_a_name_must_have_the_shape_of_the_kind_asked_for() -> None:
    sources = "Parsing odd_tides with tide.parse() raises tide.TableFormatError; as_integer_ratio() gives a fraction."
    exception = "What exception does tide.parse raise when the tide table is not well formed?"
    found = expected(exception)
    assert found is not None
    assert names_given("odd_tides [1].", exception, found, sources) == []  # snake_case is no exception class
    assert names_given("It raises the odd_tides exception.", exception, found, sources) == []
    assert names_given("gauge.error [1].", exception, found, sources + " gauge.error") == ["gauge.error"]
    assert names_given("tide.TableFormatError [1].", exception, found, sources) == ["tide.TableFormatError"]
    assert names_given("tide.TableFormatError.msg [1].", exception, found, sources + " msg") == []  # an attribute
    module = "Which module do almost all tide tables use?"
    found = expected(module)
    assert found is not None and names_given("as_integer_ratio() [1].", module, found, sources) == []  # a call is no module
    method = expected("Which float method returns a fraction?")
    assert method is not None and names_given("as_integer_ratio() [1].", "Which float method returns a fraction?", method,
                                              sources) == ["as_integer_ratio()"]


def test_name_options_come_from_the_best_evidence_sentences_new_to_the_question() -> None:
    from smallfirst.retrieval.expectation import name_options

    station = (Path(__file__).parent / "fixtures" / "trust" / "station.md").read_text()
    question = "Which function returns the rain gauge level?"
    found = evidence_for(question, station, FERRY)
    expectation = expected(question)
    assert expectation is not None
    options = name_options(question, expectation, found.ranked, station + FERRY)
    assert options[0] == ("read_gauge()", 0), options  # the best sentence's name first, with its source
    assert all(name not in ("function", "i.e") for name, _ in options)
    assert len({name for name, _ in options}) == len(options) <= 8


def test_the_name_given_must_stand_in_the_best_evidence_sentence() -> None:
    station = (Path(__file__).parent / "fixtures" / "trust" / "station.md").read_text()
    question = "Which function returns the rain gauge level?"
    found = evidence_for(question, station)
    assert check_answer(question, "read_gauge() [1].", found.ranked, [station]).supported
    verdict = check_answer(question, "wind_speed() [1].", found.ranked, [station])  # in the sources, next to it
    assert not verdict.supported and verdict.unsupported[0]["why"] == "the name it gives is not in the best evidence sentence"


def test_a_chosen_plain_word_is_stated_with_the_kind_asked_for() -> None:
    from smallfirst.retrieval.expectation import answer_phrase

    question = "Which module implements ring buffers on top of plain arrays?"
    sources = "The loopq module implements ring buffers based on plain arrays."
    expectation = expected(question)
    assert expectation is not None
    assert answer_phrase("loopq", expectation) == "loopq module"
    assert answer_phrase("read_gauge()", expectation) == "read_gauge()"
    found = evidence_for(question, sources)
    assert not check_answer(question, "loopq [1].", found.ranked, [sources]).supported  # a bare word names nothing
    assert check_answer(question, "loopq module [1].", found.ranked, [sources]).supported


def test_the_sentence_giving_the_name_must_be_about_what_the_question_asks() -> None:
    question = "Which lamp type constant is used for a flashing fog beacon?"
    off_topic = "The lens colour is given as LENS_RED."
    found = evidence_for(question, off_topic)
    verdict = check_answer(question, "LENS_RED [1].", found.ranked, [off_topic])  # the best sentence, but not about it
    assert not verdict.supported
    assert verdict.unsupported[0]["why"] == "the sentence giving the name is not about what the question asks"
    on_topic = "A flashing fog beacon is lit with LAMP_FLASH."
    found = evidence_for(question, on_topic)
    assert check_answer(question, "LAMP_FLASH [1].", found.ranked, [on_topic]).supported


def test_a_name_that_is_the_whole_answer_needs_no_other_window() -> None:
    question = "Which configure option enables the DTrace markers when building CPython?"
    sources = ("Building\n\nCPython must then be configured with the --with-dtrace option.\n\n"
               "Markers\n\nDTrace markers are details of the CPython interpreter; building them needs DTrace tools.")
    found = evidence_for(question, sources)
    assert "--with-dtrace" in found.ranked[0].text
    assert check_answer(question, "--with-dtrace [1].", found.ranked, [sources]).supported
    # The question's own words around it add no claim: the name is still the whole answer.
    assert check_answer(question, "--with-dtrace for DTrace markers [1].", found.ranked, [sources]).supported


def test_sentences_that_give_a_name_come_first() -> None:
    from smallfirst.retrieval.expectation import names_first

    question = "Which function returns the rain gauge level?"
    sources = "Rain gauge\n\nThe rain gauge level is returned in millimetres, once an hour. Call read_gauge() for it."
    found = evidence_for(question, sources)
    assert "read_gauge()" not in found.ranked[0].text
    ordered = names_first(question, found)
    assert "read_gauge()" in ordered.ranked[0].text and len(ordered.ranked) == len(found.ranked)
    assert names_first("When is the gauge read?", found) is found  # a question that asks for no name keeps its order
    assert names_first(question, ordered) is ordered


def test_an_operator_names_the_operator_asked_for() -> None:
    question = "Which operator does floor division?"
    sources = "Arithmetic\n\nTo do floor division and get an integer result you can use the // operator."
    expectation = expected(question)
    assert expectation is not None and names_given(" // ", question, expectation, sources) == ["//"]
    assert names_given("Arithmetic\n---\nUse it -- or not.", question, expectation, sources) == []  # dashes, a rule
    found = evidence_for(question, sources)
    assert check_answer(question, "// [1].", found.ranked, [sources]).supported


def test_a_name_must_stand_in_the_sentence_as_a_word_of_its_own() -> None:
    question = "Which function renders the tide chart?"
    sources = ("Charts\n\nThe plotting table is shown in grey, and draw() renders the tide chart.\n\n"
               "Figures\n\nEvery figure comes back from plot() once it is complete.")
    found = evidence_for(question, sources)
    assert check_answer(question, "draw() [1].", found.ranked, [sources]).supported
    verdict = check_answer(question, "plot() [1].", found.ranked, [sources])  # "plot" only inside "plotting"
    assert not verdict.supported
    assert verdict.unsupported[0]["why"] == "the name it gives is not in the best evidence sentence"


@pytest.mark.parametrize(("question", "answer"), [
    ("Which file name is conventionally used to store the lighthouse's nightly tide log?",
     "The filename is the name of the file."),
    ("Which tide almanac does the lightkeeper use?", "The light keeper almanac."),
])
def test_a_question_word_spelt_as_one_word_or_two_is_no_new_word(question: str, answer: str) -> None:
    sources = "Logbook\n\nThe filename is kept; the lightkeeper uses a light keeper almanac for the name of the file."
    found = evidence_for(question, sources)
    verdict = check_answer(question, answer, found.ranked, [sources])
    assert not verdict.supported and verdict.unsupported[0]["why"] == "the answer only restates the question"


def test_an_answer_caught_in_a_loop_is_not_supported() -> None:
    question = "What does the TWB knotting idiom stand for?"
    sources = "Knotting\n\nThis idiom is called Tuck-Wrap-Bind after its three steps."
    found = evidence_for(question, sources)
    assert check_answer(question, "It is called Tuck-Wrap-Bind [1].", found.ranked, [sources]).supported
    looping = "It is called Tuck-Wrap-Bind. This idiom is the first step.\nThis idiom is the first step."
    verdict = check_answer(question, looping, found.ranked, [sources])
    assert not verdict.supported and verdict.unsupported[0]["why"] == "the answer repeats itself"


def test_a_value_beside_its_subject_in_a_less_matching_window_is_supported() -> None:
    question = "What is the default channel of the harbour radio?"
    sources = ("Callers\n\nBy default only the harbour radio's own crews may call: "
               "the exact boat, call sign and channel of the crew.\n\n"
               "Settings\n\nThe harbour radio listens on band B and 16 by default.")
    found = evidence_for(question, sources)
    assert "16" not in found.ranked[0].text  # the best window holds more of the question's terms, but no value
    assert check_answer(question, "16 by default [1].", found.ranked, [sources]).supported


def test_a_name_of_several_capitalised_words_is_one_name() -> None:
    question = "What library implements star chart rendering in the planetarium console?"
    sources = ("Planetarium console\n\nChart rendering is implemented using the Orion Sky library, "
               "which supports styles of rendering.")
    expectation = expected(question)
    assert expectation is not None
    assert names_given(sources, question, expectation, sources) == ["Orion Sky"]  # not "Orion" and "sky" apart
    found = evidence_for(question, sources)
    assert check_answer(question, "Orion Sky library [1].", found.ranked, [sources]).supported
