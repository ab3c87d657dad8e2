"""One emulated vLLM instance: the engine loop and the OpenAI endpoints.

The engine loop (one asyncio task) drives the engine model in wall-clock
time::

    while there is work:
        out = sched.schedule()                    # vLLM v1 scheduling pass
        end = start + sched.step_time(out)        # virtual seconds
        sleep until wall time t0 + end / speedup
        res = sched.update_from_output(out, end)
        deliver: one SSE chunk per stream that got a token, finished
                 responses, metrics                 # one pass, no per-request wakeups

Time is the engine's own clock: virtual seconds = (wall - t0) x speedup.
Steps are laid end to end in virtual time (`start` = previous `end`), so the
millisecond granularity of event-loop timers and the cost of delivering a
step do not accumulate; only when the loop falls more than `_MAX_LAG_WALL`
behind wall time (it is overloaded) is the lag dropped, and that distortion
is what benchmarks/emulator_capacity.py measures.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from dualpool.emulator._config import EmulatorConfig
from dualpool.emulator._metrics import InstanceMetrics
from dualpool.emulator._openai import (
    ApiError,
    Filler,
    ParsedRequest,
    StreamRenderer,
    dumps,
    error_body,
    full_response,
    load_body,
    new_request_id,
    now_created,
    parse_request,
)
from dualpool.engine import Request as EngineRequest
from dualpool.engine import RequestStatus, Scheduler, StepResult
from dualpool.errors import RequestError
from dualpool.http import Exchange, Request
from dualpool.tokenizers import Tokenizer, render_chat

__all__ = ["EmulatedInstance"]

# Beyond this much wall time behind schedule the engine clock stops trying to
# catch up (the process is overloaded); below it, steps stay end to end.
_MAX_LAG_WALL = 0.005
_LLAMA3_BOS = 128000


@dataclass(slots=True, eq=False)
class _Live:
    """A generation request in flight: its HTTP exchange and what was sent."""

    ex: Exchange
    req: EngineRequest
    parsed: ParsedRequest
    req_id: str
    created: int
    # Output tokens already delivered to the client.
    sent: int
    renderer: StreamRenderer | None


class EmulatedInstance:
    """An engine model behind vLLM's HTTP API, on one port."""

    def __init__(
        self,
        config: EmulatorConfig,
        index: int,
        tokenizer: Tokenizer,
        filler: Filler,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.config = config
        self.index = index
        self.model_name = config.model_name
        self.speedup = config.speedup
        self.sched = scheduler or config.build_scheduler()
        self.max_model_len = self.sched.config.max_model_len
        self.tokenizer = tokenizer
        self.filler = filler
        self.metrics = InstanceMetrics(self.sched, self.model_name, config.gpu_memory_utilization)
        self._rng = random.Random(config.seed * 1_000_003 + index)
        self._live: dict[str, _Live] = {}
        self._work = asyncio.Event()
        self._t0 = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._created = now_created()
        self.accepting = True
        # Wall seconds the engine loop spent behind schedule beyond _MAX_LAG_WALL.
        self.dropped_lag_wall = 0.0

    # -- clock ---------------------------------------------------------------------

    def start_clock(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._t0 = loop.time()

    def vnow(self) -> float:
        """Virtual seconds since the instance started."""
        assert self._loop is not None
        return (self._loop.time() - self._t0) * self.speedup

    @property
    def num_in_flight(self) -> int:
        return len(self._live)

    # -- engine loop ---------------------------------------------------------------

    async def run(self) -> None:
        """The engine loop; runs until cancelled."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self.start_clock(loop)
        sched = self.sched
        speedup = self.speedup
        t0 = self._t0
        max_lag = _MAX_LAG_WALL * speedup
        prev_end: float | None = None
        while True:
            if not sched.has_unfinished_requests:
                prev_end = None
                self._work.clear()
                await self._work.wait()
                continue
            vnow = (loop.time() - t0) * speedup
            if prev_end is None:
                start = vnow
            elif prev_end < vnow - max_lag:
                self.dropped_lag_wall += (vnow - max_lag - prev_end) / speedup
                start = vnow - max_lag
            else:
                start = prev_end
            out = sched.schedule()
            if out.is_empty:
                # Nothing can run (cannot happen with a feasible plan); wait for a change.
                sched.update_from_output(out, start)
                prev_end = None
                self._work.clear()
                await self._work.wait()
                continue
            end = start + sched.step_time(out)
            delay = t0 + end / speedup - loop.time()
            await asyncio.sleep(delay if delay > 0 else 0)
            res = sched.update_from_output(out, end)
            prev_end = end
            self._deliver(out.scheduled, res)

    def _deliver(self, scheduled: list[EngineRequest], res: StepResult) -> None:
        live_map = self._live
        metrics = self.metrics
        for req in res.first_tokens:
            ttft = req.ttft
            if ttft is not None:
                metrics.ttft.observe(ttft)
        filler = self.filler
        jp = filler.json_pieces
        npieces = len(jp)
        for req in scheduled:
            live = live_map.get(req.request_id)
            if live is None:
                continue
            start = live.sent
            k = req.num_output_tokens - start
            if k <= 0:
                continue
            live.sent = req.num_output_tokens
            finished = req.is_finished
            r = live.renderer
            if r is not None:
                text = jp[start % npieces] if k == 1 else dumps(filler.text(start, k))
                first = r.role_chunk() if start == 0 and r.chat else b""
                if not finished:
                    live.ex.write(first + r.token_chunk(text))
                    continue
                data = first + r.final_chunk(text, req.finish_reason or "stop")
                if live.parsed.include_usage:
                    data += r.usage_chunk(req.prompt_tokens, req.num_output_tokens)
                live.ex.end(data + r.done())
            elif finished:
                live.ex.send(
                    200,
                    full_response(
                        live.req_id,
                        live.parsed.chat,
                        self.model_name,
                        live.created,
                        filler.text(0, req.num_output_tokens),
                        req.finish_reason or "stop",
                        req.prompt_tokens,
                        req.num_output_tokens,
                    ),
                )
            if finished:
                del live_map[req.request_id]
        for req in res.finished:
            e2e = req.e2e_latency
            if e2e is not None:
                metrics.e2e.observe(e2e)
            tpot = req.tpot
            if tpot is not None and req.num_output_tokens > 1:
                metrics.tpot.observe(tpot)
            metrics.success[req.finish_reason or "stop"].inc()

    def _abort(self, req_id: str) -> None:
        """The client went away: free the request's slot and KV blocks."""
        if self._live.pop(req_id, None) is None:
            return
        if self.sched.abort_request(req_id, self.vnow()) is not None:
            self.metrics.success["abort"].inc()
            self._work.set()

    def abort_all(self, status_message: str) -> int:
        """Cancel every request in flight (shutdown); returns how many."""
        lives = list(self._live.values())
        for live in lives:
            self._live.pop(live.req_id, None)
            self.sched.abort_request(live.req_id, self.vnow())
            self.metrics.success["abort"].inc()
            if live.renderer is not None:
                live.ex.end(StreamRenderer.done())
            else:
                live.ex.send(503, error_body(status_message, 503, "ServiceUnavailableError"))
        return len(lives)

    # -- HTTP ----------------------------------------------------------------------

    def error_body(self, status: int, message: str) -> bytes:
        """Protocol-level errors found by the HTTP layer (400, 413, 431, ...)."""
        return error_body(
            message, status, "BadRequestError" if status < 500 else "InternalServerError"
        )

    def handle(self, request: Request, ex: Exchange) -> None:
        """Route one request (HttpHandler); never raises."""
        try:
            self._route(request, ex)
        except ApiError as e:
            ex.send(e.status, e.body())
        except RequestError as e:
            ex.send(400, error_body(str(e), 400, "BadRequestError", e.param))
        except Exception as e:  # pragma: no cover - a bug; still answer like vLLM
            ex.send(500, error_body(f"{type(e).__name__}: {e}", 500, "InternalServerError"))

    def _route(self, request: Request, ex: Exchange) -> None:
        path, method = request.path, request.method
        if path in (b"/v1/chat/completions", b"/v1/completions"):
            if method != b"POST":
                self._method_not_allowed(ex)
            elif not self.accepting:
                ex.send(
                    503, error_body("The server is shutting down.", 503, "ServiceUnavailableError")
                )
            else:
                self._generate(request, ex, chat=path == b"/v1/chat/completions")
        elif path == b"/health":
            if method != b"GET":  # FastAPI routes: HEAD gets 405 (without a body)
                self._method_not_allowed(ex)
            else:
                ex.send(200, b"", content_type=b"text/plain; charset=utf-8")
        elif path == b"/v1/models":
            if method != b"GET":  # FastAPI routes: HEAD gets 405 (without a body)
                self._method_not_allowed(ex)
            else:
                ex.send(200, self._models())
        elif path == b"/metrics":
            if method != b"GET":  # FastAPI routes: HEAD gets 405 (without a body)
                self._method_not_allowed(ex)
            else:
                ex.send(
                    200,
                    self.metrics.render(),
                    content_type=b"text/plain; version=0.0.4; charset=utf-8",
                )
        elif path == b"/tokenize":
            if method != b"POST":
                self._method_not_allowed(ex)
            else:
                ex.send(200, self._tokenize(request.body))
        elif path == b"/version":
            ex.send(200, b'{"version":"dualpool-emulate"}')
        else:
            ex.send(404, b'{"detail":"Not Found"}')

    @staticmethod
    def _method_not_allowed(ex: Exchange) -> None:
        ex.send(405, b'{"detail":"Method Not Allowed"}')

    def _models(self) -> bytes:
        name = self.model_name
        card = {
            "id": name,
            "object": "model",
            "created": self._created,
            "owned_by": "vllm",
            "root": name,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{self.index:032x}",
                    "object": "model_permission",
                    "created": self._created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        return dumps({"object": "list", "data": [card]})

    def _tokenize(self, body_bytes: bytes) -> bytes:
        body = load_body(body_bytes)
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise ApiError(f"The model `{model}` does not exist.", 404, "NotFoundError", "model")
        tok = self.tokenizer
        if "messages" in body:
            messages = body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise ApiError("messages: Input should be a valid list", param="messages")
            tokens = tok.encode_template(render_chat(messages, tok.template, body.get("tools")))
        elif isinstance(body.get("prompt"), str):
            tokens = tok.encode(body["prompt"])
            if tok.name == "llama3" and body.get("add_special_tokens", True):
                tokens = [_LLAMA3_BOS, *tokens]
        else:
            raise ApiError("Either 'prompt' or 'messages' must be provided", param="prompt")
        return dumps(
            {
                "count": len(tokens),
                "max_model_len": self.max_model_len,
                "tokens": tokens,
                "token_strs": None,
            }
        )

    def _generate(self, request: Request, ex: Exchange, *, chat: bool) -> None:
        parsed = parse_request(
            request.body,
            request.text_headers(),
            chat=chat,
            tokenizer=self.tokenizer,
            model_name=self.model_name,
            max_model_len=self.max_model_len,
            rng=self._rng,
            default_output_median=self.config.default_output_median,
        )
        req_id = new_request_id(chat)
        req = self.sched.add_request(
            req_id, parsed.prompt_tokens, parsed.max_tokens, self.vnow(), parsed.output_tokens
        )
        if req.status == RequestStatus.FINISHED_REJECTED:  # parse_request checks first
            raise ApiError(req.error or "rejected", param="input_tokens")
        created = now_created()
        renderer = StreamRenderer(req_id, chat, self.model_name, created) if parsed.stream else None
        self._live[req_id] = _Live(ex, req, parsed, req_id, created, 0, renderer)
        ex.on_disconnect = lambda: self._abort(req_id)
        if renderer is not None:
            ex.start_stream(200, b"text/event-stream; charset=utf-8")
        self._work.set()
