"""The one publish-or-un-mark relay (common/relay.py): what could not be sent is un-marked,
once, after the caller's log line."""

from common.relay import publish_or_unmark


def test_the_ids_of_the_batches_that_failed_are_unmarked_together_once() -> None:
    sent: list[tuple[str, list[str]]] = []
    calls: list[tuple[str, list[str]]] = []

    def send(key: str, ids: list[str]) -> None:
        if key == "down":
            raise ConnectionError(key)
        sent.append((key, ids))

    unsent = publish_or_unmark(
        [("up", ["a"]), ("down", ["b", "c"]), ("up", ["d"]), ("down", ["e"])],
        send,
        lambda ids: calls.append(("unmark", ids)),
        failed=lambda ids, exc: calls.append((f"failed {exc}", ids)),
    )
    assert unsent == ["b", "c", "e"]
    assert sent == [("up", ["a"]), ("up", ["d"])]
    assert calls == [("failed down", ["b", "c", "e"]), ("unmark", ["b", "c", "e"])]


def test_nothing_is_unmarked_when_everything_was_sent() -> None:
    def unmark(ids: list[str]) -> None:
        raise AssertionError(ids)

    assert publish_or_unmark([(None, ["a"])], lambda _, __: None, unmark) == []
