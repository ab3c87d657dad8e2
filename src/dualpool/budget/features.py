"""What an OpenAI request body tells us about its token budget, read without a tokenizer.

`extract_features` walks a parsed chat or completions body once and returns a
flat `RequestFeatures`: the UTF-8 bytes that become prompt tokens (free text
apart from structured JSON such as tool definitions and tool calls), the number
of messages (the chat template adds tokens per message that no byte count sees),
image and audio parts (a configured token cost each), the declared output limit,
and the content class of the dominant text.

It keeps references to the free texts (no copy), so the text's shape
(`TextShape`: non-ASCII bytes, digits, punctuation, newlines, spaces, runs of
spaces, word starts, capitals and runs of capitals, long letter runs, and the
starts of letter runs and digit runs) can be counted on demand by
`count_shape()`. Tokens follow these far more closely than bytes alone (a digit
is a token per 1-3, a word of prose about one); the calibrator learns a linear
model of tokens on them. Counting is one `bytes.translate` into character
classes and a few `bytes.count`s over the whole text: a few nanoseconds per
byte, which is more than the rest of routing for a typical body, so the router
asks for it only when the decision could depend on it (docs/estimator.md), and
the calibrator at feedback time, off the request path.

Bodies come from clients, so every field is checked: a wrong type raises
`RequestError` naming the parameter, the way vLLM's OpenAI server answers 400.
Nothing else escapes: invalid unicode (lone surrogates) is counted as the
server would receive it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from dualpool.budget.classes import STRUCTURED_CLASS, ContentClassifier
from dualpool.errors import RequestError

__all__ = ["SHAPE_FEATURES", "RequestFeatures", "extract_features", "utf8_len"]

# The shape counts, in the order of the linear model's coefficients after bytes.
SHAPE_FEATURES: tuple[str, ...] = (
    "nonascii",
    "digits",
    "punct",
    "newlines",
    "spaces",
    "space_runs",
    "words",
    "upper",
    "caps_runs",
    "long_runs",
    "letter_runs",
    "digit_runs",
)


# Character classes as bit flags, one byte per text byte (`bytes.translate`):
_DIGIT = 0x01
_PUNCT = 0x02  # printable ASCII that is neither a letter, a digit nor a space
_SPACE = 0x04  # space, tab, CR, VT, FF
_NEWLINE = 0x08
_WHITE = 0x10  # set with _SPACE and with _NEWLINE: any whitespace
_LETTER = 0x20  # an ASCII letter; non-ASCII bytes are 0 (counted apart)
_UPPER = 0x40  # set with _LETTER on an uppercase ASCII letter


def _class_table() -> bytes:
    out = bytearray(256)
    for c in range(128):
        ch = chr(c)
        if ch.isupper():
            out[c] = _LETTER | _UPPER
        elif ch.isalpha():
            out[c] = _LETTER
        elif ch.isdigit():
            out[c] = _DIGIT
        elif ch == "\n":
            out[c] = _NEWLINE | _WHITE
        elif ch in " \t\r\x0b\x0c":
            out[c] = _SPACE | _WHITE
        elif 33 <= c < 127:
            out[c] = _PUNCT
    return bytes(out)


_CLASSES = _class_table()
_DIGIT_BYTE = bytes([_DIGIT])
_PUNCT_BYTE = bytes([_PUNCT])
_SPACE_BYTE = bytes([_SPACE | _WHITE])
_NEWLINE_BYTE = bytes([_NEWLINE | _WHITE])
_WHITE_BYTE = bytes([_WHITE])
_UPPER_BYTE = bytes([_LETTER | _UPPER])
_UPPER_MASK_BYTE = bytes([_UPPER])
_LETTER_MASK_BYTE = bytes([_LETTER])
# A run of at least this many ASCII letters is counted once (`long_runs`): a
# long word or identifier splits into several tokens where a short word is one.
LONG_RUN = 10

_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_AUDIO_PARTS = frozenset({"input_audio", "audio_url", "audio"})
_VIDEO_PARTS = frozenset({"video_url", "video"})
_TEXT_PARTS = frozenset({"text", "input_text", "refusal"})


# NOTE: not frozen. A frozen dataclass sets each field through object.__setattr__,
# which costs microseconds per instance on the request path; treat it as immutable.
@dataclass(slots=True, init=False)
class RequestFeatures:
    """The inputs of the token-budget estimate, one request (treat as immutable)."""

    # Model name as the client sent it ("" when absent).
    model: str
    # Content class of the dominant text ("prose", "code", "zh", ..., or "json").
    content_class: str
    # UTF-8 bytes of free text that become prompt tokens (contents, names).
    text_bytes: int
    # UTF-8 bytes of structured JSON (tools, functions, tool calls and their arguments).
    structured_bytes: int
    # Messages in a chat request; 1 for a completions request.
    num_messages: int
    # Image parts (each costs a configured number of tokens).
    num_images: int
    # Audio and video parts (each costs a configured number of tokens).
    num_audio: int
    # max_completion_tokens, else max_tokens; None when the request sets no limit.
    max_output_tokens: int | None
    # Exact prompt length when the prompt was given as token ids, else None.
    known_prompt_tokens: int | None
    # True for /v1/chat/completions bodies.
    is_chat: bool
    # The free texts, by reference (None: a request known only by its lengths).
    texts: list[str] | None
    # The free text's shape (SHAPE_FEATURES), summed over `texts`; all 0 until
    # counted (`count_shape`), and then `shaped` is True.
    shaped: bool
    nonascii: int  # UTF-8 bytes beyond one per character
    digits: int
    punct: int  # ASCII punctuation and symbols
    newlines: int
    spaces: int  # spaces, tabs, carriage returns
    space_runs: int  # whitespace right after whitespace (indentation, alignment)
    words: int  # an ASCII letter right after whitespace (word starts)
    upper: int  # uppercase ASCII letters
    caps_runs: int  # an uppercase letter right after one (acronyms, all-caps words)
    long_runs: int  # runs of >= LONG_RUN ASCII letters (long words, identifiers)
    letter_runs: int  # an ASCII letter not right after one (a word's pre-token)
    digit_runs: int  # a digit not right after one (a number's first pre-token)

    # An explicit __init__ (init=False): mypyc compiles it natively, where the one
    # dataclasses generates stays interpreted (~5x slower per instance).
    def __init__(
        self,
        model: str,
        content_class: str,
        text_bytes: int,
        structured_bytes: int,
        num_messages: int,
        num_images: int,
        num_audio: int,
        max_output_tokens: int | None,
        known_prompt_tokens: int | None = None,
        is_chat: bool = True,
        texts: list[str] | None = None,
    ) -> None:
        self.model = model
        self.content_class = content_class
        self.text_bytes = text_bytes
        self.structured_bytes = structured_bytes
        self.num_messages = num_messages
        self.num_images = num_images
        self.num_audio = num_audio
        self.max_output_tokens = max_output_tokens
        self.known_prompt_tokens = known_prompt_tokens
        self.is_chat = is_chat
        self.texts = texts
        self.shaped = False
        self.nonascii = self.digits = self.punct = self.newlines = 0
        self.spaces = self.space_runs = self.words = 0
        self.upper = self.caps_runs = self.long_runs = 0
        self.letter_runs = self.digit_runs = 0

    def count_shape(self) -> bool:
        """Count the texts' shape once; False when there is no text to count."""
        if self.shaped:
            return True
        texts = self.texts
        if not texts:
            return False
        shape = TextShape()
        for t in texts:
            shape.add(t, len(t) if t.isascii() else utf8_len(t))
        self.nonascii = shape.nonascii
        self.digits = shape.digits
        self.punct = shape.punct
        self.newlines = shape.newlines
        self.spaces = shape.spaces
        self.space_runs = shape.space_runs
        self.words = shape.words
        self.upper = shape.upper
        self.caps_runs = shape.caps_runs
        self.long_runs = shape.long_runs
        self.letter_runs = shape.letter_runs
        self.digit_runs = shape.digit_runs
        self.shaped = True
        return True

    def shape_vector(self) -> list[float]:
        """Text bytes, the shape counts, then 1 (a constant per request): the model's order."""
        return [
            float(self.text_bytes),
            float(self.nonascii),
            float(self.digits),
            float(self.punct),
            float(self.newlines),
            float(self.spaces),
            float(self.space_runs),
            float(self.words),
            float(self.upper),
            float(self.caps_runs),
            float(self.long_runs),
            float(self.letter_runs),
            float(self.digit_runs),
            1.0,
        ]

    @property
    def total_bytes(self) -> int:
        return self.text_bytes + self.structured_bytes


class TextShape:
    """Running shape counts of a request's free text (see SHAPE_FEATURES)."""

    __slots__ = (
        "caps_runs",
        "digit_runs",
        "digits",
        "letter_runs",
        "long_runs",
        "newlines",
        "nonascii",
        "punct",
        "space_runs",
        "spaces",
        "upper",
        "words",
    )

    def __init__(self) -> None:
        self.nonascii = 0
        self.digits = 0
        self.punct = 0
        self.newlines = 0
        self.spaces = 0
        self.space_runs = 0
        self.words = 0
        self.upper = 0
        self.caps_runs = 0
        self.long_runs = 0
        self.letter_runs = 0
        self.digit_runs = 0

    def add(self, text: str, nbytes: int) -> None:
        """Count `text`, whose UTF-8 length is `nbytes`.

        One `translate` maps each byte to its class flags; single classes are
        `bytes.count`s, and the two pair counts (whitespace after whitespace, a
        letter after whitespace) are bitwise ANDs of the flags read as one big
        integer with itself shifted by a byte: C loops over machine words,
        where counting a two-byte pattern with `bytes.count` costs ~10x more.
        Runs of LONG_RUN letters are found the same way, by doubling ANDs of
        the letter mask (runs of 2, 4, 8, then 8 + 2 = 10 bytes), and the
        starts of letter and digit runs as a mask without itself shifted by a
        byte (the pre-tokens of Llama-3 and Qwen: a word, a number).
        """
        if nbytes == len(text):
            raw = text.encode("ascii")
        else:
            self.nonascii += nbytes - len(text)
            raw = text.encode("utf-8", "surrogatepass")
        m = raw.translate(_CLASSES)
        digits = m.count(_DIGIT_BYTE)
        self.punct += m.count(_PUNCT_BYTE)
        self.newlines += m.count(_NEWLINE_BYTE)
        self.spaces += m.count(_SPACE_BYTE)
        flags = int.from_bytes(m, "little")
        white = flags & int.from_bytes(_WHITE_BYTE * len(m), "little")
        # Byte i whitespace -> bit 4 of byte i + 1 (shift 8); -> bit 5 (shift 9).
        self.space_runs += ((white << 8) & flags).bit_count()
        self.words += ((white << 1 + 8) & flags).bit_count()
        # Byte i set in r10 when bytes i-9..i are all letters; a run's start is
        # where r10 is set and was not one byte before.
        r1 = flags & int.from_bytes(_LETTER_MASK_BYTE * len(m), "little")
        r2 = r1 & (r1 << 8)
        r4 = r2 & (r2 << 16)
        r10 = r4 & (r4 << 32)
        r10 &= r2 << 64
        self.long_runs += (r10 & ~(r10 << 8)).bit_count()
        # Starts of runs: set here and not one byte before.
        self.letter_runs += (r1 & ~(r1 << 8)).bit_count()
        if digits:  # the run starts only when there is a digit at all
            self.digits += digits
            dm = flags & int.from_bytes(_DIGIT_BYTE * len(m), "little")
            self.digit_runs += (dm & ~(dm << 8)).bit_count()
        upper = m.count(_UPPER_BYTE)
        if upper:  # the pair count only when there is an uppercase letter at all
            self.upper += upper
            caps = flags & int.from_bytes(_UPPER_MASK_BYTE * len(m), "little")
            self.caps_runs += ((caps << 8) & caps).bit_count()


def utf8_len(text: str) -> int:
    """UTF-8 length of `text`; O(1) for ASCII strings (CPython stores the flag)."""
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates from JSON ("\\ud800"); count them as the 3 bytes they escape to.
        return len(text.encode("utf-8", "surrogatepass"))


# One encoder for every body: json.dumps with a non-default argument builds a new
# JSONEncoder per call. The separators are the default's (the same bytes).
_TOOL_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "))


def _json_len(value: Any) -> int:
    # Tool definitions reach the prompt as JSON rendered by the chat template;
    # the encoder is the C one, far cheaper than a recursive Python walk.
    try:
        return utf8_len(_TOOL_JSON.encode(value))
    except (TypeError, ValueError) as exc:
        raise RequestError(f"value is not JSON-serialisable: {exc}") from None


def _limit(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is not int:  # bool is an int subclass; vLLM rejects it too
        raise RequestError(f"'{key}' must be an integer, got {type(value).__name__}", key)
    if value < 0:
        raise RequestError(f"'{key}' must be >= 0, got {value}", key)
    return value


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        return ""
    if not isinstance(model, str):
        raise RequestError(f"'model' must be a string, got {type(model).__name__}", "model")
    return model


class _Acc:
    """Running totals while walking a body; the dominant text is classified once."""

    __slots__ = ("images", "media", "structured", "text", "texts", "top_len", "top_text")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.text = 0
        self.structured = 0
        self.images = 0
        self.media = 0
        self.top_text = ""
        self.top_len = 0

    def add_text(self, text: str) -> None:
        n = len(text) if text.isascii() else utf8_len(text)
        self.text += n
        self.texts.append(text)
        if n > self.top_len:
            self.top_len = n
            self.top_text = text


def _walk_parts(acc: _Acc, content: Any, where: str) -> None:
    if not isinstance(content, list):
        raise RequestError(
            f"'{where}' must be a string, a list of content parts or null, "
            f"got {type(content).__name__}",
            where,
        )
    for j, item in enumerate(content):
        if isinstance(item, str):  # tolerated by vLLM: a bare string part
            acc.add_text(item)
            continue
        part = _as_dict(item)
        if part is None:
            raise RequestError(
                f"'{where}[{j}]' must be a content part object, got {type(item).__name__}",
                where,
            )
        kind = part.get("type")
        if kind is not None and type(kind) is not str:
            raise RequestError(
                f"'{where}[{j}].type' must be a string, got {type(kind).__name__}", where
            )
        if kind in _TEXT_PARTS or (kind is None and "text" in part):
            text = part.get("text", part.get("refusal"))
            if text is not None and not isinstance(text, str):
                raise RequestError(f"'{where}[{j}].text' must be a string", where)
            if text:
                acc.add_text(text)
        elif kind in _IMAGE_PARTS:
            acc.images += 1
        elif kind in _AUDIO_PARTS or kind in _VIDEO_PARTS:
            acc.media += 1
        else:
            raise RequestError(
                f"'{where}[{j}].type' {kind!r} is not a supported content part", where
            )


def _as_dict(value: Any) -> dict[str, Any] | None:
    """`value` as a dict (a Mapping copied), None when it is neither.

    A typed dict lets the compiled build read it with C dict lookups instead of
    generic method calls (`.get` on an untyped value costs ~10x more).
    """
    if type(value) is dict:
        d: dict[str, Any] = value
        return d
    if isinstance(value, Mapping):
        return dict(value)
    return None


def _walk_messages(acc: _Acc, messages: Any) -> int:
    if type(messages) is not list:
        raise RequestError(
            f"'messages' must be a list of message objects, got {type(messages).__name__}",
            "messages",
        )
    items: list[Any] = messages
    # The common case, inlined: dict messages with string content and nothing else.
    text = acc.text
    top_len = acc.top_len
    top_text = acc.top_text
    texts = acc.texts
    for i in range(len(items)):
        msg = _as_dict(items[i])
        if msg is None:
            raise RequestError(
                f"'messages[{i}]' must be an object with 'role' and 'content', "
                f"got {type(items[i]).__name__}",
                "messages",
            )
        content = msg.get("content")
        if type(content) is str:
            s: str = content
            n = len(s) if s.isascii() else utf8_len(s)
            text += n
            texts.append(s)
            if n > top_len:
                top_len, top_text = n, s
        elif content is not None:
            acc.text, acc.top_len, acc.top_text = text, top_len, top_text
            _walk_parts(acc, content, f"messages[{i}].content")
            text, top_len, top_text = acc.text, acc.top_len, acc.top_text
        if len(msg) > 2:  # more than role and content: names, tool calls
            name = msg.get("name")
            if type(name) is str:
                text += utf8_len(name)
            tool_calls = msg.get("tool_calls")
            if tool_calls:
                acc.structured += _json_len(tool_calls)
            call = msg.get("function_call")
            if call:
                acc.structured += _json_len(call)
    acc.text, acc.top_len, acc.top_text = text, top_len, top_text
    return len(items)


def _walk_prompt(acc: _Acc, prompt: Any) -> tuple[int, int | None]:
    """Returns (number of prompts, exact token count when given as token ids)."""
    if isinstance(prompt, str):
        acc.add_text(prompt)
        return 1, None
    if not isinstance(prompt, list) or not prompt:
        raise RequestError(
            "'prompt' must be a string, a list of strings, or a list of token ids",
            "prompt",
        )
    first = prompt[0]
    if type(first) is int:  # one prompt as token ids: the length is exact
        return 1, len(prompt)
    if isinstance(first, list):  # several prompts as token ids: budget the longest
        return len(prompt), max(len(p) if isinstance(p, list) else 0 for p in prompt)
    # A batch of string prompts: each is its own sequence, so the longest one decides
    # whether it fits; its bytes are what we estimate.
    longest = 0
    top = ""
    for i, p in enumerate(prompt):
        if not isinstance(p, str):
            raise RequestError(f"'prompt[{i}]' must be a string, got {type(p).__name__}", "prompt")
        n = utf8_len(p)
        if n >= longest:
            longest = n
            top = p
            acc.top_text, acc.top_len = p, n
    acc.text = longest
    acc.texts = [top]
    return len(prompt), None


def extract_features(
    body: Any, classifier: ContentClassifier, *, chat: bool | None = None
) -> RequestFeatures:
    """Read the budget-relevant features of an OpenAI request body.

    `chat` forces the endpoint kind; by default a body with `messages` is chat and
    one with `prompt` is a completions request.
    """
    d = _as_dict(body)
    if d is None:
        raise RequestError(f"request body must be a JSON object, got {type(body).__name__}")
    acc = _Acc()
    known: int | None = None
    messages = d.get("messages")
    has_messages = messages is not None or "messages" in d
    if chat is None:
        chat = has_messages or "prompt" not in d
    if chat:
        if not has_messages:
            raise RequestError("'messages' is a required property", "messages")
        num_messages = _walk_messages(acc, messages)
        tools = d.get("tools")
        if tools:
            acc.structured += _json_len(tools)
        functions = d.get("functions")
        if functions:
            acc.structured += _json_len(functions)
    else:
        if "prompt" not in d:
            raise RequestError("'prompt' is a required property", "prompt")
        _, known = _walk_prompt(acc, d["prompt"])
        num_messages = 1
    limit = d.get("max_completion_tokens")
    if type(limit) is not int or limit < 0:
        limit = _limit(d, "max_completion_tokens")
    if limit is None:
        limit = d.get("max_tokens")
        if type(limit) is not int or limit < 0:
            limit = _limit(d, "max_tokens")
    if acc.structured > acc.text:
        cls = STRUCTURED_CLASS
    else:
        cls = classifier.classify(acc.top_text, acc.top_len)
    # Positional: keyword arguments cost measurably more on this path.
    return RequestFeatures(
        _model(d),
        cls,
        acc.text,
        acc.structured,
        num_messages,
        acc.images,
        acc.media,
        limit,
        known,
        chat,
        acc.texts,
    )
