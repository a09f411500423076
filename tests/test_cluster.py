"""A real Dask cluster that loses a worker (issue 31, item 6).

`dask scheduler` and two `dask worker` processes are started as separate commands on 127.0.0.1, and
`ltnb batch` runs the smoke plan's data and obtain stages on them with `--scheduler`. While one worker
runs an obtain cell (its reset chain has finished round 1) that worker is killed with SIGKILL, nanny
and all. The batch finishes on the other worker, which reruns the lost cell (resuming its finished
rounds), and no cell that was complete is run again; the rows equal those of an uninterrupted run
(the session's smoke batch, tests/conftest.py) except their times; no process the test started
(scheduler, workers, kernels, batch) is left running.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, assert_rows_equal_except_times, smoke_plan

DASK = Path(sys.executable).with_name("dask")  # the `dask` command of the environment running the tests
STAGES = ("data", "obtain")  # enough for a cell to be lost mid-run and rerun; the rest of the plan adds minutes
TAG = "LTNB_CLUSTER_TEST"  # every process the test starts (and their children: kernels) carries it
BATCH_TIMEOUT_S = 300


def _env(tag: str) -> dict:
    """The test's environment for the commands, with this checkout first on PYTHONPATH (the same code on
    the batch's side and on every worker) and the tag that finds the processes afterwards."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env[TAG] = tag
    return env


def _tagged(tag: str) -> list[psutil.Process]:
    """Live processes (not zombies) carrying the tag."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get(TAG) == tag:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _describe(pids) -> str:
    rows = []
    for pid in pids:
        try:
            rows.append(f"pid {pid}: {' '.join(psutil.Process(pid).cmdline())[:160]}")
        except psutil.Error:
            rows.append(f"pid {pid}: (gone)")
    return "; ".join(rows) or "none"


class Cluster:
    """`dask scheduler` and `dask worker` commands, each leading its own process group (session)."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.env = folder, env
        self.scheduler_file = folder / "scheduler.json"
        self.procs: dict[str, subprocess.Popen] = {}
        self.address = ""

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")
        p = subprocess.Popen([str(DASK), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.folder,
                             start_new_session=True)
        log.close()
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def start_scheduler(self, timeout: float = 60) -> str:
        self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(self.scheduler_file)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["scheduler"].poll() is not None:
                pytest.fail(f"dask scheduler exited with {self.procs['scheduler'].returncode}:\n{self.log('scheduler')}")
            try:
                self.address = json.loads(self.scheduler_file.read_text())["address"]
                return self.address
            except (FileNotFoundError, ValueError, KeyError):
                time.sleep(0.2)
        pytest.fail(f"dask scheduler wrote no {self.scheduler_file} in {timeout:.0f} s:\n{self.log('scheduler')}")

    def start_worker(self, name: str) -> subprocess.Popen:
        return self._start(name, ["worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                                  "--name", name, "--dashboard-address", "127.0.0.1:0", "--memory-limit", "0",
                                  "--local-directory", str(self.folder / name), "--death-timeout", "60"])

    def group_pids(self, name: str) -> list[int]:
        """The command's process and all its descendants (a kernel leads a session of its own, but is
        still the worker's child)."""
        root = psutil.Process(self.procs[name].pid)
        return [root.pid] + [c.pid for c in root.children(recursive=True)]

    def stop(self, timeout: float = 30) -> dict[str, int]:
        """SIGTERM to every group still running (what a user's Ctrl-C or `kill` does), SIGKILL after
        ``timeout``; the exit codes."""
        for p in self.procs.values():
            if p.poll() is None:
                _killpg(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _killpg(p, signal.SIGKILL)
                p.wait(10)
        return {name: p.returncode for name, p in self.procs.items()}

    def kill_all(self) -> None:
        for p in self.procs.values():
            _killpg(p, signal.SIGKILL)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass


def _killpg(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _batch(plan: Path, address: str, env: dict, folder: Path, name: str) -> subprocess.Popen:
    out = open(folder / f"{name}.out", "w")
    err = open(folder / f"{name}.err", "w")
    p = subprocess.Popen([sys.executable, "-m", "ltnb.cli", "batch", str(plan), "--scheduler", address, "--no-estimate",
                          "--worker-timeout", "60"], stdout=out, stderr=err, env=env, cwd=folder,
                         start_new_session=True)
    out.close()
    err.close()
    return p


def _cell_of(key: str, study: str) -> str:
    """The batch's task key ``ltnb-<study>-<cell>-<ns>`` -> the cell."""
    m = re.fullmatch(rf"ltnb-{re.escape(study)}-(.+)-\d+", str(key))
    return m.group(1) if m else str(key)


def _victim(processing: dict[str, list[str]], study: Path) -> tuple[str, str] | None:
    """A worker and the obtain cell it runs, once that cell's reset chain has finished round 1 and the
    cell is not complete yet."""
    for worker, cells in sorted(processing.items()):
        for cell in cells:
            if cell.startswith("obtain/"):
                domain, seed = cell.split("/")[1:3]
                if (any(study.glob(f"obtain/{domain}/reset/{seed}/*/round_01.safetensors"))
                        and not (study / cell / "_COMPLETE.json").exists()):
                    return worker, cell
    return None


def _is_kernel(pid: int) -> bool:
    try:
        return "ipykernel" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def test_a_cluster_that_loses_a_worker_mid_run(tmp_path, builtin_cache, smoke):
    from distributed import Client

    from ltnb.analysis import results
    from ltnb.base import integrity
    from ltnb.study import batch
    from ltnb.study.plan import load_plan

    t_start = time.monotonic()
    tag = f"{os.getpid()}-{time.time_ns()}"
    env = _env(tag)
    plan_path, _ = smoke_plan(tmp_path, stages=STAGES)
    plan = load_plan(plan_path)
    study = plan.study_dir
    cluster = Cluster(tmp_path, env)
    runs: list[subprocess.Popen] = []
    log: list[str] = []

    def say(line: str) -> None:
        line = f"[{time.monotonic() - t_start:6.1f} s] {line}"
        log.append(line)
        print(line, flush=True)

    try:
        address = cluster.start_scheduler()
        workers = {name: cluster.start_worker(name) for name in ("w1", "w2")}
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=90)
            names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
            say(f"dask scheduler at {address} (pid {cluster.procs['scheduler'].pid}); dask workers "
                + ", ".join(f"{n} at {a} (pid {workers[n].pid})" for a, n in sorted(names.items(), key=lambda x: x[1])))
            where = client.run(lambda: __import__("ltnb").__file__)  # the same code on every worker
            assert all(Path(f).resolve().is_relative_to(ROOT.resolve()) for f in where.values()), where

            run = _batch(plan_path, address, env, tmp_path, "batch")
            runs.append(run)
            say(f"ltnb batch {plan_path.name} --scheduler {address} (the smoke plan's stages {', '.join(STAGES)}), "
                f"pid {run.pid}")
            victim = victim_cell = None
            seen_after_kill: dict[str, set[str]] = {}  # cell -> the workers that had it after the kill
            deadline = time.monotonic() + BATCH_TIMEOUT_S
            while run.poll() is None and time.monotonic() < deadline:
                processing = {names.get(a, a): [_cell_of(k, plan.study) for k in keys]
                              for a, keys in client.processing().items()}
                if victim is not None:
                    for worker, cells in processing.items():
                        for cell in cells:
                            if cell not in seen_after_kill:
                                say(f"after the kill {worker} has {cell} (running or queued)")
                            seen_after_kill.setdefault(cell, set()).add(worker)
                elif (found := _victim(processing, study)) is not None:
                    victim, victim_cell = found
                    done_at_kill = {c.key for c in plan.cells if (study / c.key / "_COMPLETE.json").exists()}
                    kept = {f: f.stat().st_mtime_ns for d in integrity.cell_folders(study, victim_cell)
                            for f in d.glob("*/round_*.safetensors")}
                    pids = cluster.group_pids(victim)
                    _killpg(workers[victim], signal.SIGKILL)
                    killed_at, t_kill = time.time(), time.monotonic()
                    workers[victim].wait(10)
                    say(f"SIGKILL to worker {victim}'s process group while it ran {victim_cell} (its reset chain had "
                        f"finished round 1): pids {pids}, its kernel {[p for p in pids if _is_kernel(p)] or 'not found'}; "
                        f"the other worker had {processing.get(({'w1', 'w2'} - {victim}).pop())}")
                    # nothing of the killed worker runs on: its kernel (a session of its own) sees its parent gone
                    while _alive(pids) and time.monotonic() < t_kill + 15:
                        time.sleep(0.1)
                    assert not _alive(pids), f"left behind by the killed worker: {_describe(_alive(pids))}"
                    say(f"every process of worker {victim} has exited, its kernel too, {time.monotonic() - t_kill:.1f} s "
                        f"after the kill")
                time.sleep(0.2)
            if run.poll() is None:
                pytest.fail(f"the batch did not finish in {BATCH_TIMEOUT_S} s:\n" + "\n".join(log))
            out = (tmp_path / "batch.out").read_text()
            say(f"the batch exited with {run.returncode}; it printed:\n" + out)
            assert victim is not None, ("no obtain cell was seen running with its round 1 finished and its cell not yet "
                                        f"complete: nothing was killed\n{out}")
            assert run.returncode == 0, out + (tmp_path / "batch.err").read_text()[-3000:]
            survivor = ({"w1", "w2"} - {victim}).pop()
            assert seen_after_kill.get(victim_cell) == {survivor}, (victim_cell, seen_after_kill)
            rerun_complete = sorted(set(seen_after_kill) & done_at_kill)
            assert not rerun_complete, f"cells complete before the kill were run again: {rerun_complete}"
            assert "failed:  0" in out and "not run: 0" in out and f"done:    {len(plan.cells)}" in out, out
            assert f"left the cluster while it ran {victim_cell}; it runs again on the other workers" in out, out
            assert all(batch.is_complete(c) for c in plan.cells), [(c.key, batch.completeness(c)) for c in plan.cells]
            marker = json.loads((study / victim_cell / "_COMPLETE.json").read_text())
            assert marker["finished"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(killed_at)), marker["finished"]
            said = [ln for ln in cluster.log("scheduler").splitlines() if re.search(r"[Rr]emov\w* worker|[Ll]ost|recomput", ln)]
            say("the scheduler's log on the loss:\n  " + "\n  ".join(said))
            unchanged = [f for f, t in kept.items() if f.exists() and f.stat().st_mtime_ns == t]
            left_temp = sorted(p.name for d in integrity.cell_folders(study, victim_cell) for p in d.rglob(".*.tmp"))
            say(f"{victim_cell}, lost with {victim}, ran again on {survivor} (its marker: finished {marker['finished']}); "
                f"ticket files written before the kill and kept by the rerun (it resumed): {len(unchanged)} of "
                f"{len(kept)}; temporary files the killed kernel left: {left_temp or 'none'}")

            # the uninterrupted run: the session's smoke batch (tests/conftest.py; a LocalCluster, every stage)
            assert smoke["code"] == 0, smoke["log"]
            uninterrupted = results.load(smoke["pristine"])
            uninterrupted = uninterrupted[uninterrupted.stage.isin(STAGES)]
            interrupted = results.load(study)
            assert len(interrupted) == len(uninterrupted) > 0
            assert_rows_equal_except_times(uninterrupted, interrupted)
            say(f"result rows of {len(interrupted)} rounds (both obtain cells): equal to the uninterrupted smoke "
                f"batch's except seconds and cpu_seconds")

        codes = cluster.stop()
        say(f"scheduler and worker {survivor} stopped with SIGTERM: exit codes {codes}")
        deadline = time.monotonic() + 15
        while _tagged(tag) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _tagged(tag)
        assert not left, f"processes left behind: {_describe(p.pid for p in left)}"
        say(f"no process the test started is left (scheduler, workers, kernels, batch); the test took "
            f"{time.monotonic() - t_start:.1f} s")
    finally:
        for p in runs:
            if p.poll() is None:
                _killpg(p, signal.SIGKILL)
        cluster.kill_all()
        for p in _tagged(tag):  # a safety net only: the assertion above has already failed if any are here
            try:
                p.kill()
            except psutil.Error:
                pass
