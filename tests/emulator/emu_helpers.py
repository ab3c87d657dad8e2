"""Helpers for the emulator tests (imported by name: the test folder is on sys.path)."""

from __future__ import annotations

import re

import httpx

MODEL = "llama-3.1-8b"


def scrape(url: str) -> dict[str, float]:
    """`/metrics` as {series name with labels: value}."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    """The value of the one series `name` whose labels include `labels`."""
    for key, v in values.items():
        m = re.fullmatch(r"([^{]+)(?:\{(.*)\})?", key)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v2 for k, v2 in labels.items()):
            return v
    raise KeyError(name)
