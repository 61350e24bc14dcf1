"""Text generation's pieces that need no model: stop sequences in the stream and the output,
and token counts. tests/system/test_openai_client.py runs the real model."""

import torch

from models.base import output_sink
from models.text_generation import (
    RowStreamer,
    StopFlagged,
    cut_at_stop,
    first_stop,
    held_back,
)

END = 0


def decode(tokens: list[int]) -> str:
    """Each token is one character: its code point."""
    return "".join(chr(t) for t in tokens if t != END)


def run(rows: list[str], stops: list[list[str]]) -> tuple[RowStreamer, list[str], list[str]]:
    """Streams `rows` (each padded with END) through a RowStreamer; returns it, each row's
    chunks joined, and the final texts."""
    sent: dict[int, list[str]] = {}
    streamer = RowStreamer(decode, list(range(len(rows))), {END}, stops)
    width = max(len(row) for row in rows) + 1
    columns = [[*map(ord, row), *[END] * (width - len(row))] for row in rows]
    with output_sink(lambda chunks: [sent.setdefault(i, []).append(c) for i, c in chunks.items()]):
        streamer.put(torch.tensor([[1] for _ in rows]))  # the prompt
        for step in range(width):
            streamer.put(torch.tensor([column[step] for column in columns]))
        texts = [streamer.final(row, decode(column)) for row, column in enumerate(columns)]
        streamer.finish(texts)
    return streamer, ["".join(sent.get(i, [])) for i in range(len(rows))], texts


def test_a_stop_sequence_ends_the_row_before_it_and_nothing_of_it_is_streamed() -> None:
    streamer, streamed, texts = run(["one, two, three", "abc", "x<END>y"], [[", t"], [], ["<END>"]])
    assert texts == ["one", "abc", "x"] and streamed == texts
    assert streamer.stopped == [True, False, True]
    # Counted through the token that completed the stop; the end-of-sequence token is not.
    assert streamer.counts() == [len("one, t"), 3, len("x<END>")]


def test_text_that_could_begin_a_stop_waits_and_goes_out_once_it_cannot() -> None:
    _, streamed, texts = run(["a-b--c"], [["---"]])
    assert texts == ["a-b--c"] and streamed == texts


def test_the_first_stop_to_complete_wins_over_an_earlier_one_still_incomplete() -> None:
    # "b" completes at the third character; "abc" would start earlier but completes later.
    _, streamed, texts = run(["xabc"], [["abc", "b"]])
    assert texts == ["xa"] and streamed == ["xa"]


def test_stopped_rows_are_finished_by_the_stopping_criteria() -> None:
    stopped = [False, True]
    criteria = StopFlagged([0, 1], stopped)
    assert criteria(torch.zeros((2, 1), dtype=torch.long), None).tolist() == [False, True]


def test_stop_helpers() -> None:
    assert first_stop("hello world", ["o", "wor"]) == 4
    assert first_stop("hello", ["x"]) is None
    assert cut_at_stop("hello world", [" w"]) == "hello"
    assert held_back("the end<", ["<END>"]) == 1
    assert held_back("the end<EN", ["<END>", "NN"]) == 3
    assert held_back("plain", ["<END>"]) == 0
