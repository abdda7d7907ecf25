"""UTF-8-safe incremental decoding and stop-sequence matching across arbitrary chunk splits."""

from hypothesis import given, settings
from hypothesis import strategies as st

from minerva.generation.text_stream import IncrementalDecoder, StopMatcher


def run_matcher(chunks: list[str], stops: tuple[str, ...]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(c) for c in chunks)
    return out + matcher.flush(), matcher.stopped


def reference(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """Feed one character at a time: generation stops at the first stop sequence to complete."""
    for end in range(len(text) + 1):
        done = [end - len(s) for s in stops if s and text[:end].endswith(s)]
        if done:
            return text[: min(done)], True
    return text, False


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(text[last:point])
        last = point
    pieces.append(text[last:])
    return pieces


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="abc<>/ é", max_size=40), st.lists(st.text(alphabet="abc<>/", min_size=1, max_size=4), max_size=3),
       st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_stop_matching_is_split_independent(text, stops, cuts):
    stops = tuple(stops)
    assert run_matcher(split(text, cuts), stops) == reference(text, stops)


def test_the_stop_that_completes_first_wins():
    # '<a<' starts earlier but 'a' completes first: generation would already have stopped
    assert run_matcher(["<a", "<"], ("a", "<a<")) == ("<", True)
    assert run_matcher(["<a<"], ("a", "<a<")) == ("<", True)


def test_stop_sequence_is_never_emitted_and_ends_text():
    assert run_matcher(["Hello <|e", "nd|> more"], ("<|end|>",)) == ("Hello ", True)
    assert run_matcher(["a", "b", "c"], ("x",)) == ("abc", False)
    assert run_matcher(["ab"], ("b", "ab")) == ("", True)


def test_held_back_prefix_is_released_at_the_end():
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("go ST") == "go "
    assert matcher.flush() == "ST"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.lists(st.integers(min_value=0, max_value=200), max_size=10))
def test_incremental_decoder_never_breaks_characters(text, cuts):
    data = text.encode("utf-8")
    points = sorted({c % (len(data) + 1) for c in cuts})
    decoder, out, last = IncrementalDecoder(), [], 0
    for point in points + [len(data)]:
        piece = decoder.feed(data[last:point])
        assert "\ufffd" not in piece or "\ufffd" in text
        out.append(piece)
        last = point
    out.append(decoder.flush())
    assert "".join(out) == text


def test_emoji_split_across_tokens():
    decoder = IncrementalDecoder()
    emoji = "🦙".encode()
    assert decoder.feed(emoji[:2]) == ""
    assert decoder.feed(emoji[2:]) == "🦙"
