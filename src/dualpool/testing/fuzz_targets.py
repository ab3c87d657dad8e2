"""Coverage-guided fuzz targets for the request-body paths of both HTTP faces.

Each target takes raw body bytes and runs what a face does with a POST body before
any I/O: the gateway parses with the bounded JSON parser and routes with the Router
(the budget estimate, the certain-refusal rule), then decides whether to ask for
usage; the emulator validates the body as vLLM does and counts its tokens. A body
may only end in the face's own 400 family (`BadJson`, `RequestError`, `ApiError`);
any other exception is a bug the face would answer with 500.

Run with atheris (libFuzzer for Python; the `fuzz` extra):

    python -m dualpool.testing.fuzz_targets gateway -runs=200000 -max_len=4096
    python -m dualpool.testing.fuzz_targets emulator -max_total_time=60

Arguments after the target name are libFuzzer's. A crash prints the traceback and
writes the input to `crash-<sha1>` (reproduce: the same command with that file as the
last argument). benchmarks/fuzz_parser.py drives both targets and reports.
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SEEDS", "TOKENS", "emulator_target", "gateway_target"]

# Starting points: the shapes the faces see (the fuzzer mutates from these).
SEEDS: tuple[bytes, ...] = (
    b'{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":16}',
    b'{"model":"m","messages":[{"role":"system","content":"be brief"},'
    b'{"role":"user","content":[{"type":"text","text":"def f(x): return 2*x"}]}],'
    b'"stream":true,"stream_options":{"include_usage":false}}',
    b'{"model":"m","prompt":"Once upon a time","max_tokens":4,"stream":true}',
    b'{"model":"m","prompt":["a","b"],"max_completion_tokens":100000}',
    b'{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function",'
    b'"function":{"name":"f","parameters":{"type":"object"}}}],"n":1,"stream":null}',
    # deeper than Python's recursion limit: was a RecursionError (500) in the emulator
    b'{"model":"m","messages":' + b"[" * 1200,
)

# A libFuzzer dictionary: the schema's keys and values (written to a file by the runner).
TOKENS: tuple[str, ...] = (
    '"model"', '"messages"', '"role"', '"content"', '"user"', '"system"', '"assistant"',
    '"tool"', '"type"', '"text"', '"image_url"', '"prompt"', '"max_tokens"',
    '"max_completion_tokens"', '"stream"', '"stream_options"', '"include_usage"', '"tools"',
    '"function"', '"n"', "true", "false", "null", "[", "]", "{", "}", ":", ",",
    "1e308", "-1", "0", "99999999999999999999", '"\\u0000"', '"\\ud800"',
)  # fmt: skip


def _gateway() -> Callable[[bytes], None]:
    from dualpool.errors import RequestError
    from dualpool.gateway._sse import ask_for_usage
    from dualpool.http import BadJson, parse_json_body
    from dualpool.policy import PoolSpec
    from dualpool.router import Router

    router = Router([PoolSpec("short", 8192), PoolSpec("long", 131072)])

    def target(data: bytes) -> None:
        try:
            body = parse_json_body(data)
        except BadJson:
            return
        if type(body) is not dict:
            return
        for chat in (True, False):
            try:
                router.route(body, saturated=[False, True], chat=chat)
            except RequestError:
                return
        if body.get("stream") is True:
            ask_for_usage(body)

    return target


def _emulator() -> Callable[[bytes], None]:
    from dualpool.emulator._openai import ApiError, parse_request
    from dualpool.tokenizers import load_tokenizer

    tok = load_tokenizer("llama3")
    rng = random.Random(0)

    def target(data: bytes) -> None:
        for chat in (True, False):
            with contextlib.suppress(ApiError):
                parse_request(
                    data, {}, chat=chat, tokenizer=tok, model_name="m",
                    max_model_len=8192, rng=rng, default_output_median=64,
                )  # fmt: skip

    return target


def gateway_target() -> Callable[[bytes], None]:
    """The gateway's body path (parse, route, usage rewrite) as a fuzz target."""
    return _gateway()


def emulator_target() -> Callable[[bytes], None]:
    """The emulator's body path (vLLM's validation, token counting) as a fuzz target."""
    return _emulator()


_TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "gateway": gateway_target,
    "emulator": emulator_target,
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in _TARGETS:
        sys.exit(f"usage: python -m dualpool.testing.fuzz_targets {{{'|'.join(_TARGETS)}}} "
                 "[libFuzzer arguments]")  # fmt: skip
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: pip install 'dualpool[fuzz]'")
    name, rest = argv[0], argv[1:]
    if not any(not a.startswith("-") for a in rest):
        # No corpus folder given: start from the seeds (libFuzzer adds what it finds).
        corpus = Path(tempfile.mkdtemp(prefix=f"dualpool-fuzz-{name}-"))
        for i, seed in enumerate(SEEDS):
            (corpus / f"seed{i}").write_bytes(seed)
        rest.append(str(corpus))
    if not any(a.startswith("-dict=") for a in rest):
        dict_file = Path(tempfile.mkdtemp(prefix="dualpool-fuzz-dict-")) / "openai.dict"
        dict_file.write_text("".join(f"kw{i}={json.dumps(t)}\n" for i, t in enumerate(TOKENS)))
        rest.insert(0, f"-dict={dict_file}")
    target = _TARGETS[name]()
    atheris.instrument_all()  # coverage feedback from every loaded module
    one: Any = target
    atheris.Setup([sys.argv[0], *rest], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
