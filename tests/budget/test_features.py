from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpool.budget import ContentClassifier, extract_features, utf8_len
from dualpool.errors import RequestError

CLS = ContentClassifier()


def feats(body: Any, **kw: Any):  # type: ignore[no-untyped-def]
    return extract_features(body, CLS, **kw)


def test_chat_string_content_counts_utf8_bytes_and_messages() -> None:
    f = feats(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "héllo"},
                {"role": "user", "content": "world", "name": "bob"},
            ],
        }
    )
    assert f.text_bytes == len("héllo".encode()) + 5 + 3
    assert f.num_messages == 2
    assert f.structured_bytes == 0
    assert f.model == "m"
    assert f.max_output_tokens is None


def test_content_parts_images_audio_and_text() -> None:
    f = feats(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "describe"},
                        {"type": "image_url", "image_url": {"url": "data:..."}},
                        {"type": "image_url", "image_url": {"url": "data:..."}},
                        {"type": "input_audio", "input_audio": {"data": "..."}},
                    ],
                }
            ]
        }
    )
    assert f.text_bytes == len("describe")
    assert (f.num_images, f.num_audio) == (2, 1)


def test_tools_and_tool_calls_are_structured_bytes() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    calls = [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    f = feats(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": calls},
            ],
            "tools": tools,
        }
    )
    assert f.text_bytes == 2
    assert f.structured_bytes > 50
    assert f.content_class == "json"


def test_output_limit_precedence() -> None:
    base: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}]}
    assert feats({**base, "max_tokens": 10}).max_output_tokens == 10
    assert feats({**base, "max_tokens": 10, "max_completion_tokens": 20}).max_output_tokens == 20
    assert feats({**base, "max_tokens": None}).max_output_tokens is None


def test_completions_prompt_forms() -> None:
    assert feats({"prompt": "abc"}).text_bytes == 3
    f = feats({"prompt": ["a", "abcd", "ab"]})
    assert f.text_bytes == 4 and not f.is_chat
    assert feats({"prompt": [1, 2, 3, 4]}).known_prompt_tokens == 4
    assert feats({"prompt": [[1, 2], [1, 2, 3]]}).known_prompt_tokens == 3


def test_lone_surrogates_are_counted_not_raised() -> None:
    s = json.loads('"abc\\ud800def"')
    assert utf8_len(s) == 9
    f = feats({"messages": [{"role": "user", "content": s}]})
    assert f.text_bytes == 9


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ("text", None),
        ({}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [1]}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [5]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "bogus"}]}]}, "messages[0].content"),
        ({"messages": [], "max_tokens": "10"}, "max_tokens"),
        ({"messages": [], "max_tokens": True}, "max_tokens"),
        ({"messages": [], "max_tokens": -1}, "max_tokens"),
        ({"messages": [], "model": 3}, "model"),
        ({"prompt": 3}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", 3]}, "prompt"),
    ],
)
def test_odd_bodies_give_a_clear_error(body: Any, param: str | None) -> None:
    with pytest.raises(RequestError) as info:
        feats(body)
    assert info.value.param == param
    assert str(info.value)


def test_null_content_and_empty_messages_give_a_sane_estimate() -> None:
    f = feats({"messages": [{"role": "assistant", "content": None}]})
    assert f.text_bytes == 0 and f.num_messages == 1
    assert feats({"messages": []}).num_messages == 0


def test_huge_text_is_fine() -> None:
    f = feats({"messages": [{"role": "user", "content": "a" * 5_000_000}]})
    assert f.text_bytes == 5_000_000


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system"])},
                optional={"content": json_values, "name": json_values, "tool_calls": json_values},
            ),
            max_size=4,
        )
        | json_values,
        "prompt": json_values,
        "max_tokens": json_values,
        "tools": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(bodies)
def test_arbitrary_bodies_never_raise_anything_but_request_error(body: dict[str, Any]) -> None:
    try:
        f = feats(body)
    except RequestError:
        return
    assert f.text_bytes >= 0 and f.structured_bytes >= 0


content_parts = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "type": json_values | st.sampled_from(["text", "image_url", "input_audio", "video"]),
            "text": json_values,
            "refusal": json_values,
        },
    )
    | json_values,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(content_parts)
def test_malformed_content_parts_raise_only_request_error(parts: list[Any]) -> None:
    try:
        f = feats({"messages": [{"role": "user", "content": parts}]})
    except RequestError:
        return
    f.count_shape()
    assert f.text_bytes >= 0 and f.words >= 0 and f.digits >= 0


@pytest.mark.parametrize("kind", [[], {}, 1, 1.5, True])
def test_unhashable_or_odd_part_type_is_a_request_error(kind: Any) -> None:
    with pytest.raises(RequestError, match="type"):
        feats({"messages": [{"role": "user", "content": [{"type": kind}]}]})


def test_shape_counts() -> None:
    f = feats({"messages": [{"role": "user", "content": "Hi there, 2024!\n  ok été"}]})
    assert not f.shaped and f.count_shape() and f.shaped
    assert f.digits == 4
    assert f.punct == 2
    assert f.newlines == 1
    assert f.nonascii == 2
    assert f.words == 2  # ASCII letters after whitespace: "there", "ok" ("été" is non-ASCII)
    assert f.space_runs == 2  # "\n " and "  ": whitespace right after whitespace
    assert f.upper == 1 and f.caps_runs == 0
    g = feats({"messages": [{"role": "user", "content": "NASA's rOCKET, Xy"}]})
    assert g.count_shape()
    assert g.upper == 10 and g.caps_runs == 7  # "ASA" after "N", "CKET" after "O"
    h = feats(
        {
            "messages": [
                {"role": "user", "content": "internationalization, abcdefghi x1Verylongword"}
            ]
        }
    )
    assert h.count_shape()
    assert h.long_runs == 2  # 20 and 12 letters; 9 ("abcdefghi") is not a long run
    assert h.letter_runs == 4  # "internationalization", "abcdefghi", "x", "Verylongword"
    assert h.digit_runs == 1
    d = feats({"messages": [{"role": "user", "content": "v1.25, 2024-11-30 x"}]})
    assert d.count_shape()
    assert d.digits == 11 and d.digit_runs == 5  # "1", "25", "2024", "11", "30"
    assert d.letter_runs == 2  # "v", "x"


def _naive_shape(text: str) -> tuple[int, ...]:
    """The shape counts (SHAPE_FEATURES) by a plain loop over the UTF-8 bytes."""
    raw = text.encode("utf-8", "surrogatepass")
    nonascii = len(raw) - len(text)
    digits = punct = newlines = spaces = runs = words = upper = caps = long_runs = 0
    letter_runs = digit_runs = 0
    prev_digit = False
    prev_white = False
    prev_upper = False
    letters = 0  # ASCII letters in a row so far
    for b in raw:
        ch = chr(b) if b < 128 else ""
        white = ch in (" ", "\t", "\r", "\x0b", "\x0c", "\n") and ch != ""
        if ch.isdigit():
            digits += 1
        elif ch == "\n":
            newlines += 1
        elif white:
            spaces += 1
        elif ch and 33 <= b < 127 and not ch.isalpha():
            punct += 1
        if prev_white and white:
            runs += 1
        if prev_white and ch.isalpha():
            words += 1
        is_upper = "A" <= ch <= "Z"
        if is_upper:
            upper += 1
            if prev_upper:
                caps += 1
        letters = letters + 1 if b < 128 and ch.isalpha() else 0
        if letters == 10:  # the run reaches 10 letters: counted once
            long_runs += 1
        if letters == 1:  # a letter not right after one
            letter_runs += 1
        is_digit = ch.isdigit()
        if is_digit and not prev_digit:
            digit_runs += 1
        prev_digit = is_digit
        prev_white = white
        prev_upper = is_upper
    return (
        nonascii,
        digits,
        punct,
        newlines,
        spaces,
        runs,
        words,
        upper,
        caps,
        long_runs,
        letter_runs,
        digit_runs,
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        # Arbitrary text, and text dense in ASCII letters (capitals, runs of them).
        st.one_of(
            st.text(max_size=120),
            st.text(alphabet="abcdeXYZ \n1.", max_size=120),
            st.text(alphabet="abcdeXYZé ", max_size=120),  # long runs of letters
            st.text(alphabet="ab12,. ", max_size=120),  # runs of letters and digits
        ),
        min_size=1,
        max_size=4,
    )
)
def test_shape_counts_equal_a_naive_reference(contents: list[str]) -> None:
    body = {"messages": [{"role": "user", "content": c} for c in contents]}
    f = feats(body)
    assert f.text_bytes == sum(len(c.encode("utf-8", "surrogatepass")) for c in contents)
    if not f.count_shape():
        assert not any(contents)
        return
    want = [0] * 12
    for c in contents:
        for i, v in enumerate(_naive_shape(c)):
            want[i] += v
    got = (
        f.nonascii,
        f.digits,
        f.punct,
        f.newlines,
        f.spaces,
        f.space_runs,
        f.words,
        f.upper,
        f.caps_runs,
        f.long_runs,
        f.letter_runs,
        f.digit_runs,
    )
    assert got == tuple(want)
