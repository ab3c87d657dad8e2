"""The OpenAI wire format as vLLM's server speaks it: parsing and rendering.

Request side: `parse_chat` / `parse_completion` turn a JSON body into a
`ParsedRequest` (prompt tokens counted with a real tokenizer, the output
length the emulated engine will generate) or raise `ApiError` carrying the
status, type and message vLLM would answer with.

Response side: `Filler` makes output text whose token count is exact, and
`StreamRenderer` pre-renders the constant parts of a request's SSE chunks so
one chunk costs a few byte concatenations.

Shapes follow vllm/entrypoints/openai (ErrorResponse{error: ErrorInfo},
ChatCompletionStreamResponse, CompletionStreamResponse, ModelCard,
TokenizeResponse).
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dualpool.contract import over_length_message
from dualpool.tokenizers import Tokenizer, chat_prompt_tokens

__all__ = [
    "OUTPUT_TOKENS_HEADER",
    "ApiError",
    "Filler",
    "ParsedRequest",
    "StreamRenderer",
    "error_body",
    "parse_request",
]

# Trace replays set this so the emulator generates the trace's output length
# (capped by max_tokens).
OUTPUT_TOKENS_HEADER = "x-dualpool-output-tokens"

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ApiError(Exception):
    """An error answer: HTTP status, OpenAI error type, message, param."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type_: str = "BadRequestError",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.param = param

    def body(self) -> bytes:
        return error_body(str(self), self.status, self.type, self.param)


def error_body(message: str, status: int, type_: str, param: str | None = None) -> bytes:
    """vLLM's ErrorResponse: {"error": {"message", "type", "param", "code"}}."""
    return _compact(
        {"error": {"message": message, "type": type_, "param": param, "code": status}}
    ).encode()


# -- output text ------------------------------------------------------------------

# Common words that are one token each in the Llama-3 and Qwen BPEs; checked
# at start-up (a word and any concatenation of them must tokenize exactly).
_WORDS = (" the", " of", " and", " to", " a", " in", " is", " that", " it", " for")
_CHARS = "lorem ipsum dolor sit amet "


class Filler:
    """Output pieces that are one token each, also when concatenated."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        pieces = list(_CHARS) if tokenizer.name == "bytes" else list(_WORDS)
        text = "".join(pieces) * 3
        if any(tokenizer.count(p) != 1 for p in pieces) or tokenizer.count(text) != 3 * len(pieces):
            raise RuntimeError(f"filler pieces are not single tokens in {tokenizer.name}")
        self.pieces = pieces
        # JSON string literals of each piece, ready to splice into chunks.
        self.json_pieces = [_compact(p).encode() for p in pieces]
        self._n = len(pieces)

    def text(self, start: int, count: int) -> str:
        """The text of output tokens start .. start + count - 1."""
        pieces, n = self.pieces, self._n
        return "".join([pieces[(start + i) % n] for i in range(count)])


# -- requests ----------------------------------------------------------------------


@dataclass(slots=True)
class ParsedRequest:
    """What the engine needs from one generation request."""

    chat: bool
    prompt_tokens: int
    # For the length check and finish_reason: the client's max_tokens, or
    # vLLM's default max_model_len - prompt_tokens.
    max_tokens: int
    # Whether the client gave max_tokens (else the default above applies).
    max_tokens_given: bool
    # Tokens the emulated model will generate (<= max_tokens).
    output_tokens: int
    stream: bool
    include_usage: bool
    # The prompt came as token ids (exact count: no "at least" in the 400).
    token_prompt: bool


def _int_field(body: Mapping[str, Any], name: str) -> int | None:
    v: object = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(f"{name}: Input should be a valid integer, got {v!r}", param=name)
    return v


def _prompt_tokens_completion(tok: Tokenizer, prompt: Any) -> tuple[int, bool]:
    """Prompt tokens of a /v1/completions prompt; (count, given as token ids)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        # vLLM tokenizes with add_special_tokens=True: Llama-3 prepends BOS.
        bos = 1 if tok.name == "llama3" else 0
        n = bos + tok.count(prompt)
        if n == 0:
            raise ApiError("The prompt cannot be empty.", param="prompt")
        return n, False
    if isinstance(prompt, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    ):
        if not prompt:
            raise ApiError("The prompt cannot be empty.", param="prompt")
        return len(prompt), True
    if isinstance(prompt, list):
        raise ApiError(
            "The emulator serves one prompt per request; send batched prompts "
            "as separate requests.",
            param="prompt",
        )
    raise ApiError(
        "prompt: Input should be a string, a list of token ids or a list of strings",
        param="prompt",
    )


# Content parts a message may carry without a "type" (vLLM's Custom*Simple* params).
_UNTYPED_PARTS = ("image_url", "audio_url", "video_url")


def _check_part(part: object) -> None:
    """A content part as vLLM's pydantic union takes it: an object; "type" a string;
    a text part's "text" a string; without "type", one of the simple media forms."""
    if isinstance(part, str):
        return
    if not isinstance(part, dict):
        raise ApiError("messages: a content part should be an object", param="messages")
    kind = part.get("type")
    if kind is None:
        if not any(isinstance(part.get(k), str) for k in _UNTYPED_PARTS):
            raise ApiError("messages: a content part needs a 'type'", param="messages")
        return
    if not isinstance(kind, str):
        raise ApiError("messages: a content part's 'type' should be a string", param="messages")
    if kind == "text" and not isinstance(part.get("text"), str):
        raise ApiError("messages: a text part's 'text' should be a string", param="messages")


def _messages_tokens(tok: Tokenizer, body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    if messages is None:
        raise ApiError("messages: Field required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages: Input should be a non-empty list", param="messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(
                "messages: each message must be an object with a string 'role'", param="messages"
            )
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                _check_part(part)
        elif content is not None and not isinstance(content, str):
            raise ApiError(
                "messages: content should be a string or a list of content parts",
                param="messages",
            )
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ApiError("tools: Input should be a valid list", param="tools")
    return chat_prompt_tokens(tok, messages, tools)


def load_body(body_bytes: bytes) -> dict[str, Any]:
    """The JSON object of a request body, or the ApiError (400) vLLM answers.

    vLLM's routes take the body as a pydantic model through FastAPI, which answers a
    JSON decode error as a validation error and any other failure while reading the
    body (nesting deeper than Python's recursion limit: RecursionError) as 400 "There
    was an error parsing the body" (fastapi/routing.py, get_request_handler).
    """
    try:
        body = json.loads(body_bytes)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(f"JSON decode error: {exc}") from None
    except RecursionError:
        raise ApiError("There was an error parsing the body") from None
    if not isinstance(body, dict):
        raise ApiError("Input should be a valid dictionary or object to extract fields from")
    return body


def parse_request(
    body_bytes: bytes,
    headers: Mapping[str, str],
    *,
    chat: bool,
    tokenizer: Tokenizer,
    model_name: str,
    max_model_len: int,
    rng: random.Random,
    default_output_median: int,
) -> ParsedRequest:
    """Validate a generation request as vLLM would; ApiError on the first problem."""
    body = load_body(body_bytes)
    # The body is validated first, the model last, as vLLM does (pydantic, then
    # OpenAIServing._check_model).
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError("model: Input should be a valid string", param="model")
    n = _int_field(body, "n")
    if n is not None and n != 1:
        raise ApiError("The emulator generates one choice per request (n=1).", param="n")
    # vLLM: `stream: Optional[bool] = False` (null is not streaming), and its
    # check_stream_options validator refuses only *truthy* stream_options without
    # stream ({} passes); StreamOptions itself must be an object.
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError("stream: Input should be a valid boolean", param="stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts and not stream:
        raise ApiError(
            "Stream options can only be defined when `stream=True`.", param="stream_options"
        )
    if opts is not None:
        if not isinstance(opts, dict):
            raise ApiError(
                "stream_options: Input should be a valid dictionary", param="stream_options"
            )
        iu = opts.get("include_usage")
        if iu is not None and not isinstance(iu, bool):
            raise ApiError(
                "stream_options.include_usage: Input should be a valid boolean",
                param="stream_options",
            )
        include_usage = bool(iu)

    if chat:
        prompt_tokens, token_prompt = _messages_tokens(tokenizer, body), False
        max_tokens = _int_field(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens")
    else:
        if "prompt" not in body:
            raise ApiError("prompt: Field required", param="prompt")
        prompt_tokens, token_prompt = _prompt_tokens_completion(tokenizer, body["prompt"])
        max_tokens = _int_field(body, "max_tokens")
        if max_tokens is None and "max_tokens" not in body:
            max_tokens = 16  # the OpenAI completions default, which vLLM keeps
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")

    header = headers.get(OUTPUT_TOKENS_HEADER)
    wanted: int | None = None
    if header is not None:
        try:
            wanted = int(header)
        except ValueError:
            wanted = 0
        if wanted < 1:
            raise ApiError(f"{OUTPUT_TOKENS_HEADER} must be a positive integer, got {header!r}")

    given = max_tokens is not None
    if max_tokens is None:
        # vLLM's default: whatever room the context leaves.
        room = max_model_len - prompt_tokens
        if room < 1:
            raise ApiError(
                f"This model's maximum context length is {max_model_len} tokens. However, "
                f"your request has {prompt_tokens} input tokens. Please reduce the length of "
                f"the input messages. (parameter=input_tokens, value={prompt_tokens})",
                param="input_tokens",
            )
        max_tokens = room
    elif prompt_tokens + max_tokens > max_model_len:
        raise ApiError(
            over_length_message(
                max_model_len, max_tokens, prompt_tokens, truncated_tokenization=not token_prompt
            ),
            param="input_tokens",
        )

    if wanted is not None:
        output = min(wanted, max_tokens)
    elif given:
        output = max_tokens
    else:
        # Log-normal draw (sigma 1) around the median, like chat output lengths.
        draw = default_output_median * math.exp(rng.gauss(0.0, 1.0))
        output = max(1, min(max_tokens, round(draw)))
    if model is not None and model != model_name:
        raise ApiError(f"The model `{model}` does not exist.", 404, "NotFoundError", param="model")
    return ParsedRequest(
        chat, prompt_tokens, max_tokens, given, output, stream, include_usage, token_prompt
    )


# -- responses ---------------------------------------------------------------------


def new_request_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
    }


def full_response(
    req_id: str,
    chat: bool,
    model: str,
    created: int,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> bytes:
    """A non-streaming chat.completion or text_completion object."""
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": [],
                "reasoning_content": None,
            },
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        obj = "text_completion"
    return _compact(
        {
            "id": req_id,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens),
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }
    ).encode()


class StreamRenderer:
    """SSE events of one streamed request, with their constant parts pre-rendered."""

    __slots__ = ("_done_tail", "_head", "_mid_tail", "_usage_head", "chat")

    def __init__(self, req_id: str, chat: bool, model: str, created: int) -> None:
        self.chat = chat
        obj = "chat.completion.chunk" if chat else "text_completion"
        common = (
            f'{{"id":"{req_id}","object":"{obj}","created":{created},"model":{_compact(model)},'
        )
        self._usage_head = f'data: {common}"choices":[],"usage":'.encode()
        if chat:
            self._head = f'data: {common}"choices":[{{"index":0,"delta":{{"content":'.encode()
            self._mid_tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'
            self._done_tail = b'},"logprobs":null,"finish_reason":"%s","stop_reason":null}]}\n\n'
        else:
            self._head = f'data: {common}"choices":[{{"index":0,"text":'.encode()
            self._mid_tail = b',"logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
            self._done_tail = b',"logprobs":null,"finish_reason":"%s","stop_reason":null}]}\n\n'

    def role_chunk(self) -> bytes:
        """vLLM's first chat chunk: the assistant role with empty content."""
        return (
            self._head.replace(b'"delta":{"content":', b'"delta":{"role":"assistant","content":')
            + b'""'
            + self._mid_tail
        )

    def token_chunk(self, json_text: bytes) -> bytes:
        return self._head + json_text + self._mid_tail

    def final_chunk(self, json_text: bytes, finish_reason: str) -> bytes:
        return self._head + json_text + self._done_tail % finish_reason.encode()

    def usage_chunk(self, prompt: int, completion: int) -> bytes:
        # vLLM streams chunks with exclude_unset: no prompt_tokens_details key.
        u = {"prompt_tokens": prompt, "total_tokens": prompt + completion}
        u["completion_tokens"] = completion
        return self._usage_head + _compact(u).encode() + b"}\n\n"

    @staticmethod
    def done() -> bytes:
        return b"data: [DONE]\n\n"


def now_created() -> int:
    return int(time.time())


def dumps(obj: Any) -> bytes:
    return _compact(obj).encode()
