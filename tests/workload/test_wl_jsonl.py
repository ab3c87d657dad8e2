from __future__ import annotations

import json
from pathlib import Path

import pytest

from dualpool.errors import WorkloadError
from dualpool.workload import UNKNOWN_TOKENS, JsonlWorkload, fill_tokens, prompt_bytes


def write_jsonl(tmp_path: Path, objs: list[object]) -> Path:
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join(json.dumps(o, ensure_ascii=False) for o in objs) + "\n")
    return p


CHAT = {"model": "m", "messages": [{"role": "user", "content": "héllo"}]}


def test_records_with_timestamps(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path,
        [
            {
                "timestamp": 10.0,
                "body": {**CHAT, "max_tokens": 50},
                "prompt_tokens": 7,
                "output_tokens": 3,
            },
            {
                "timestamp": 12.5,
                "body": {**CHAT, "max_tokens": 50, "max_completion_tokens": 20},
                "category": "code",
            },
            {
                "timestamp": 13.0,
                "body": {"model": "m", "prompt": "abc"},
                "usage": {"prompt_tokens": 2, "completion_tokens": 9},
            },
        ],
    )
    a, b, c = list(JsonlWorkload(p))
    assert [r.arrival_s for r in (a, b, c)] == [0.0, 2.5, 3.0]
    assert (a.prompt_tokens, a.output_tokens, a.max_tokens) == (7, 3, 50)
    assert (b.prompt_tokens, b.output_tokens, b.max_tokens) == (UNKNOWN_TOKENS, UNKNOWN_TOKENS, 20)
    assert b.category == "code" and a.category is None
    assert a.prompt_bytes == len("héllo".encode())
    assert a.body is not None and a.body["model"] == "m"
    assert (c.prompt_tokens, c.output_tokens, c.num_messages, c.prompt_bytes) == (2, 9, 1, 3)


def test_iso_timestamps(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path,
        [
            {"timestamp": "2024-05-10 00:00:00.5", "body": CHAT},
            {"timestamp": "2024-05-10 00:00:02", "body": CHAT},
        ],
    )
    assert [r.arrival_s for r in JsonlWorkload(p)] == [0.0, 1.5]


def test_bare_bodies_need_rate(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path, [CHAT, CHAT, CHAT])
    with pytest.raises(WorkloadError, match=r"r\.jsonl:1: no 'timestamp'.*rate="):
        list(JsonlWorkload(p))
    reqs = list(JsonlWorkload(p, rate=2.0, seed=1))
    assert len(reqs) == 3
    assert reqs == list(JsonlWorkload(p, rate=2.0, seed=1))
    assert reqs[0].arrival_s < reqs[1].arrival_s < reqs[2].arrival_s


def test_prompt_bytes_parts_and_messages() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "ab"},
            {"role": "user", "content": [{"type": "text", "text": "日本"}, {"type": "image_url"}]},
        ]
    }
    assert prompt_bytes(body) == 2 + 6
    assert prompt_bytes({"prompt": ["ab", "c"]}) == 3


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{oops", r"r\.jsonl:2: not JSON"),
        ("[1, 2]", r"r\.jsonl:2: expected a JSON object"),
        ('{"timestamp": 1, "body": {"model": "m"}}', r"r\.jsonl:2: the body must be"),
        ('{"timestamp": 1, "body": {"prompt": "x", "max_tokens": -4}}', r"r\.jsonl:2: max_tokens"),
        (
            '{"timestamp": 1, "body": {"prompt": "x"}, "prompt_tokens": "7"}',
            r"r\.jsonl:2: prompt_tokens",
        ),
        ('{"timestamp": 0, "body": {"prompt": "x"}}', r"r\.jsonl:2: timestamp .* earlier"),
        ('{"timestamp": [1], "body": {"prompt": "x"}}', r"r\.jsonl:2: timestamp must be"),
    ],
)
def test_bad_lines(tmp_path: Path, line: str, match: str) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text('{"timestamp": 5, "body": {"prompt": "a"}}\n' + line + "\n")
    with pytest.raises(WorkloadError, match=match):
        list(JsonlWorkload(p))


def test_fill_tokens(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path,
        [{"timestamp": 0, "body": CHAT, "prompt_tokens": 4}, {"timestamp": 1, "body": CHAT}],
    )
    calls: list[float] = []

    def count(r: object) -> tuple[int, int]:
        calls.append(1.0)
        return 11, 22

    a, b = list(fill_tokens(JsonlWorkload(p), count))
    assert (a.prompt_tokens, a.output_tokens) == (4, 22)
    assert (b.prompt_tokens, b.output_tokens) == (11, 22)
    assert len(calls) == 2
