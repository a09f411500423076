"""The federated stage's Flower simulation on a private Ray cluster (``simulate``, ``RayHead``).

Flower's simulation engine (``flwr.simulation.run_simulation``, Ray backend) runs the cell's
ServerApp and ClientApps (``flower``). Ray on a small machine: Ray's raylet waits a limited time
for its dashboard agent to start, and on a busy 2-core machine the agent (a Python process that
imports ray, about 5 s of CPU here) can miss that window. ``RayHead`` therefore starts one private
single-node Ray cluster per call of ``ltnb.study.federated.run`` (``ray start --head --block`` on
127.0.0.1 with free ports; no dashboard, no log monitor, usage stats off, the agent given 180 s to
register, no idle workers started ahead, workers at niceness 0 like every other cell instead of
Ray's 15). It retries a failed start, and a small supervisor process stops Ray's process group on
exit and when the process that started it dies (a killed kernel leaves no Ray behind). Flower joins
it through ``backend_config["init_args"]["address"]``; every client gets 1 CPU and no GPU
(``client_resources``) and the head has ``workers`` CPUs, so ``workers`` clients train at once.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from ltnb.study.federated.flower import client_app, server_app
from ltnb.study.federated.protocol import ClientSpec, Federation


# A small supervisor for `ray start --head --block` (its arguments): it runs Ray in its own process
# group, and on SIGTERM or SIGINT, or when the process that started it dies (Linux prctl
# PR_SET_PDEATHSIG), it sends Ray SIGTERM, waits `grace` seconds, then kills the whole group. Ray's
# own SIGTERM shutdown sometimes hangs once its raylet is gone; the group kill ends it, and a killed
# notebook kernel leaves no Ray behind. The supervisor runs in a session of its own (``supervise``):
# `ltnb batch` kills a cancelled cell's kernel with its whole process group (SIGKILL), which would
# otherwise take the supervisor with it before it could stop Ray.
_SUPERVISOR = """
import ctypes, os, signal, subprocess, sys, time
parent, grace, cmd = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
asked = []
signal.signal(signal.SIGTERM, lambda *_: asked.append(1))
signal.signal(signal.SIGINT, lambda *_: asked.append(1))
if os.getppid() != parent:
    sys.exit(1)  # the parent is already gone
ray = subprocess.Popen(cmd, start_new_session=True)
while ray.poll() is None and not asked:
    time.sleep(0.2)
if ray.poll() is None:
    ray.send_signal(signal.SIGTERM)
end = time.time() + grace
while ray.poll() is None and time.time() < end:
    time.sleep(0.2)
try:
    os.killpg(ray.pid, signal.SIGKILL)  # what is left of the group: gcs, raylet, agents, workers
except ProcessLookupError:
    pass
"""


def supervise(command: Sequence[str], *, grace: float, **popen) -> subprocess.Popen:
    """Start ``command`` under ``_SUPERVISOR`` (see above), the supervisor in a session of its own so
    that a SIGKILL to this process's group reaches it only as its parent's death."""
    return subprocess.Popen([sys.executable, "-c", _SUPERVISOR, str(os.getpid()), str(grace), *command],
                            start_new_session=True, **popen)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """A private single-node Ray cluster for Flower's simulation engine (see the module doc).

    ``with RayHead(num_cpus=2) as head: ... head.address ...``. Starts ``ray start --head --block``
    in its own process group under a small supervisor process and waits for it. On exit, or when
    this process dies, the supervisor sends Ray SIGTERM and after ``stop_timeout`` s kills the rest
    of Ray's process group, so nothing is left behind, not even by a killed kernel. ``attempts`` starts are tried before giving up with the raylet's last log lines.
    """

    def __init__(self, num_cpus: int, *, attempts: int = 3, start_timeout: float = 240.0, stop_timeout: float = 30.0,
                 temp_dir: str | os.PathLike | None = None, log=print):
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1:
            raise ValueError(f"workers = {num_cpus!r}: expected an integer >= 1 (clients trained at once)")
        self.num_cpus, self.attempts = num_cpus, attempts
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        # Ray's socket paths must stay short: a fixed folder under the system temp dir
        self.temp_dir = Path(temp_dir or Path(tempfile.gettempdir()) / f"ltnb_ray_{os.getuid()}")
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def _command(self) -> list[str]:
        ray = str(Path(sys.executable).parent / "ray")
        ports = {k: _free_port() for k in ("port", "dashboard-agent-grpc-port", "dashboard-agent-listen-port",
                                           "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port")}
        self.address = f"127.0.0.1:{ports['port']}"
        return [ray, "start", "--head", "--block", f"--num-cpus={self.num_cpus}", "--num-gpus=0",
                "--include-dashboard=false", "--include-log-monitor=false", "--disable-usage-stats",
                "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp_dir}",
                f"--object-store-memory={200 * 1024 * 1024}"] + [f"--{k}={v}" for k, v in ports.items()]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # no idle workers started ahead: Flower's actors need their own runtime env anyway
        # workers at the priority of every other cell (Ray's default niceness for workers is 15)
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_agent_register_timeout_ms="180000",
                   RAY_enable_worker_prestart="0", RAY_prestart_worker_first_driver="0", RAY_worker_niceness="0")
        return env

    def __enter__(self) -> "RayHead":
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        errors = []
        for attempt in range(1, self.attempts + 1):
            t0 = time.time()
            out = self.temp_dir / f"ray_start_{os.getpid()}.log"
            with open(out, "w") as fh:
                self.proc = supervise(self._command(), grace=self.stop_timeout, stdout=fh, stderr=subprocess.STDOUT,
                                      env=self._env(), stdin=subprocess.DEVNULL)
            while time.time() - t0 < self.start_timeout:
                text = out.read_text(errors="replace")
                if "Ray runtime started" in text:
                    self.log(f"Ray head at {self.address} with {self.num_cpus} CPU(s) started in {time.time() - t0:.1f} s")
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.5)
            errors.append(f"attempt {attempt}: " + self._why(out))
            self._stop()
        raise RuntimeError("federated: Ray did not start (" + " | ".join(errors) + f"). Logs under {self.temp_dir}")

    def _why(self, out: Path) -> str:
        lines = [ln for ln in out.read_text(errors="replace").splitlines() if ln.strip()]
        raylet = sorted(self.temp_dir.glob("session_*/logs/raylet.out"), key=lambda p: p.stat().st_mtime)
        fatal = [ln for ln in (raylet[-1].read_text(errors="replace").splitlines() if raylet else []) if " C " in ln]
        return (fatal[-1][-300:] if fatal else lines[-1][-300:] if lines else "no output")

    def _stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)  # the supervisor stops Ray, then kills what is left of its group
        try:
            p.wait(self.stop_timeout + 15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)

    def __exit__(self, exc_type, *exc) -> None:
        self._stop()
        if exc_type is None:  # keep `ray start`'s output only when something went wrong
            with contextlib.suppress(OSError):
                (self.temp_dir / f"ray_start_{os.getpid()}.log").unlink()


def simulate(plan: Federation, spec: ClientSpec, runs, *, workers: int, progress: bool, log) -> None:
    """Serve ``runs`` ((strategy, ticket round) pairs) of the cell in one Flower simulation: the
    ServerApp (``flower.server_app``) and one ClientApp per shard of ``spec``, on a private ``RayHead``
    with ``workers`` CPUs (one per client at a time). Flower's logger and ``PYTHONPATH`` are put back."""
    from flwr.simulation import run_simulation

    abort = threading.Event()
    flwr_logger = logging.getLogger("flwr")
    level, pythonpath = flwr_logger.level, os.environ.get("PYTHONPATH")
    flwr_logger.setLevel(logging.ERROR)  # not its INFO per round, nor the run_simulation deprecation notice
    try:
        with RayHead(workers, log=log) as head, warnings_quiet():
            backend_config = {
                "init_args": {"address": head.address, "log_to_driver": False, "logging_level": "WARNING"},
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            }
            try:
                run_simulation(server_app=server_app(plan, runs, abort, progress), client_app=client_app(spec),
                               num_supernodes=len(spec.clients), backend_config=backend_config)
            finally:
                abort.set()  # a ServerApp thread still waiting for replies gives up
    finally:
        flwr_logger.setLevel(level)
        # Flower's Ray backend puts the driver's sys.path into os.environ["PYTHONPATH"]; put it back
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath


@contextlib.contextmanager
def warnings_quiet():
    """Flower's run_simulation warns that it is deprecated in favour of the `flwr run` CLI (a
    Flower App project plus a SuperLink); it is still Flower's documented Python entry point."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield
