"""deploy/: kustomize renders, every object validates against the Kubernetes schemas,
and the gateway's ConfigMap agrees with the pools it fronts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dualpool.cli.main import build_parser
from dualpool.gateway import parse_config

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("deploy/base", "deploy/overlays/emulated")
# Also Envoy with `dualpool extproc` in place of the gateway (tests/deploy/test_envoy_overlay.py).
ALL_TARGETS = (*TARGETS, "deploy/overlays/envoy")


def render(target: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (it renders kustomize: `kubectl kustomize`)")
    done = subprocess.run(
        [kubectl, "kustomize", str(REPO / target)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for o in objs:
        if o["kind"] == kind and o["metadata"]["name"].startswith(name):
            return o
    raise AssertionError(f"no {kind} {name}")


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_every_object_validates_against_the_kubernetes_schemas(target: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    objs = render(target)
    assert len(objs) >= 9
    for obj in objs:
        try:
            kv.validate(obj, kv.latest_version(), strict=True)
        except kv.ValidationError as exc:
            raise AssertionError(
                f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}"
            ) from None


def _flag(args: list[str], name: str) -> str:
    for i, a in enumerate(args):
        if a.startswith(f"{name}="):
            return a.split("=", 1)[1]
        if a == name:
            return args[i + 1]
    raise AssertionError(f"{name} not in {args}")


@pytest.mark.parametrize("target", TARGETS)
def test_the_gateway_config_matches_the_pools(target: str) -> None:
    objs = render(target)
    cm = by(objs, "ConfigMap", "dualpool-fleet")
    cfg = parse_config(yaml.safe_load(cm["data"]["fleet.yaml"]))  # the gateway's own parser
    assert cfg.calibrator.shared is not None
    redis_host = cfg.calibrator.shared.url.split("//")[1].split(":")[0]
    by(objs, "Service", redis_host)
    for pool in cfg.pools:
        assert pool.dns is not None
        svc = by(objs, "Service", pool.dns.name)
        assert svc["spec"]["clusterIP"] == "None"  # headless: one address per pod
        dep = by(objs, "Deployment", pool.dns.name)
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert int(_flag(container["args"], "--max-model-len")) == pool.max_model_len
        assert int(_flag(container["args"], "--port")) == pool.dns.port
    gw = by(objs, "Deployment", "dualpool-gateway")
    assert gw["spec"]["replicas"] >= 2
    pod = gw["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    (c,) = pod["spec"]["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    mounted = c["volumeMounts"][0]["mountPath"]
    assert c["args"] == ["--config", f"{mounted}/fleet.yaml"]
    assert pod["spec"]["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]


def test_the_emulated_overlay_needs_no_gpu() -> None:
    for obj in render("deploy/overlays/emulated"):
        if obj["kind"] != "Deployment":
            continue
        for c in obj["spec"]["template"]["spec"]["containers"]:
            assert "nvidia.com/gpu" not in str(c.get("resources"))
            if obj["metadata"]["name"].startswith("vllm-"):
                assert c["command"] == ["dualpool", "emulate"]
                # The arguments are ones `dualpool emulate` takes.
                args = build_parser().parse_args(["emulate", *c["args"]])
                assert args.port == 8000 and args.host == "0.0.0.0"
