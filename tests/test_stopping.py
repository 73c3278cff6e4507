"""StopStringHoldback: stop strings are never shown, everything else eventually is."""
import pytest

from lmstudio_lite.generation import StopStringHoldback


def _run(stops, deltas):
    """-> (emitted pieces, stopped, flushed text)."""
    h = StopStringHoldback(stops)
    pieces, stopped = [], False
    for d in deltas:
        emit, stopped = h.feed(d)
        pieces.append(emit)
        if stopped:
            break
    return pieces, stopped, h.flush()


def test_no_stops_passes_everything_through():
    pieces, stopped, tail = _run([], ["ab", "c", "###"])
    assert pieces == ["ab", "c", "###"] and not stopped and tail == ""


def test_stop_split_across_deltas():
    pieces, stopped, tail = _run(["</s>"], ["Hello <", "/", "s", "> more"])
    assert stopped and "".join(pieces) == "Hello " and tail == ""
    assert pieces[0] == "Hello "  # '<' is held back while it could start the stop


def test_partial_prefix_that_does_not_complete_is_released():
    pieces, stopped, tail = _run(["###"], ["a#", "#", "b", "c"])
    assert not stopped and "".join(pieces) == "a##bc"
    assert pieces[:2] == ["a", ""]  # '#' then '##' held
    assert pieces[2] == "##b"


def test_held_text_comes_back_on_flush():
    pieces, stopped, tail = _run(["STOP"], ["the end ST"])
    assert not stopped and pieces == ["the end "] and tail == "ST"


def test_multiple_stops_first_hit_wins():
    pieces, stopped, _ = _run(["\n\n", "User:"], ["Sure. Us", "er: hi\n\n"])
    assert stopped and "".join(pieces) == "Sure. "
    pieces, stopped, _ = _run(["\n\n", "User:"], ["Sure.\n", "\nUser:"])
    assert stopped and "".join(pieces) == "Sure."


def test_stop_at_the_very_start():
    pieces, stopped, tail = _run(["###"], ["###rest"])
    assert stopped and pieces == [""] and tail == ""
    pieces, stopped, tail = _run(["###"], ["#", "#", "#", "x"])
    assert stopped and "".join(pieces) == "" and tail == ""


def test_stop_inside_one_delta_drops_the_rest():
    pieces, stopped, _ = _run(["END"], ["abcENDdefEND"])
    assert stopped and pieces == ["abc"]


def test_feed_after_stop_emits_nothing():
    h = StopStringHoldback(["x"])
    assert h.feed("ax") == ("a", True)
    assert h.feed("more") == ("", True)
    assert h.flush() == ""


def test_overlapping_prefixes_hold_the_longest():
    # "aab" : after "aa" both "a" and "aa" could start the stop "aab".
    pieces, stopped, _ = _run(["aab"], ["xa", "a", "a", "b"])
    assert stopped and "".join(pieces) == "xa"


def test_a_lone_string_is_one_stop():
    pieces, stopped, _ = _run("ab", ["xa", "b"])
    assert stopped and "".join(pieces) == "x"


def test_empty_stop_string_rejected():
    with pytest.raises(ValueError, match="empty"):
        StopStringHoldback(["ok", ""])
