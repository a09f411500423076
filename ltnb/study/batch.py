"""Run a batch plan: execute the cells that are not complete with papermill, in parallel on Dask.

``main(plan_path, ...)`` is what ``ltnb batch PLAN`` calls. What it does:

1. Load and check the plan (``ltnb.study.plan.load_plan``); on any problem print them all and return 2,
   having run nothing and created nothing.
2. Find the complete cells: ``<cell_dir>/_COMPLETE.json`` exists, holds the cell's ``params_hash``,
   and every file it records (what the cell wrote for later cells, and what it read from earlier
   ones, ``ltnb.base.stages.cell_outputs``) still has the SHA-256 it had when the cell ran; a changed
   file makes the cell rerun, and the run says which file, with the expected and found hash. A
   complete cell whose inputs are about to rerun is checked again once they have finished.
   ``--dry-run`` lists every cell with its state and stops there. Leftover temporary files of killed
   writes are removed from the study (only from cells no other batch is running).
3. Submit each remaining cell to Dask once the cells it reads from are done: a
   ``distributed.LocalCluster`` (one process per worker, one task per worker, ``cores // threads``
   workers) by default, or the scheduler at ``scheduler`` so many machines sharing the outputs folder
   run one plan. A cell whose input failed is not run, with the reason.
4. On a worker, ``run_cell`` takes the cell's lock (``<cell_dir>/.ltnb-lock``; a second batch on the
   same study waits for it, then skips the cell if the first one completed it), executes the notebook
   with papermill into ``<cell_dir>/<stem>.ipynb`` (kept as the record of what ran, also when it
   failed), with ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``LTNB_TORCH_THREADS`` set for the
   kernel, and writes the marker atomically only when the notebook finished without error. A cell
   killed mid-way has no marker, so the next run reruns it (and its notebook resumes from its finished
   rounds). When Dask no longer wants the task (the batch was killed or interrupted), the kernel is
   killed.
5. Print a summary (done, skipped, failed with notebook path and error, not run with reason) and
   return 0, 1 when anything failed or was not run (also when no Dask worker is left, or none
   arrives, for ``worker_timeout`` seconds), or 130 after Ctrl-C or SIGTERM (pending cells
   cancelled, cluster closed, partial summary printed).

The papermill working directory of every cell is the plan's root (see ``ltnb.study.plan``), so relative
paths in parameters (e.g. ``amazon_files``) resolve against it.
"""
from __future__ import annotations

import datetime as _dt
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ltnb.base import integrity, paths, stages
from ltnb.base._io import os_error, read_json, write_json
from ltnb.study.plan import Cell, Plan, PlanError, load_plan
from ltnb.study.recorded import CELL_ENV

TORCH_THREADS_ENV = "LTNB_TORCH_THREADS"
KERNEL_UNSET_ENV = "MALLOC_TRIM_THRESHOLD_"
KERNEL_NAME = "python3"
FALLBACK_KERNEL = "ltnb-venv"
WORKER_TIMEOUT_S = 120.0  # stop when no Dask worker has been there for this long
NOT_RUN_YET = "not run yet"


# ------------------------------------------------------------------------------------ completeness
def marker_problem(marker: str | os.PathLike, params_hash: str, study_dir: str | os.PathLike, *,
                   inputs: bool = True) -> str | None:
    """Why the cell of ``marker`` is not complete (``None`` when it is): no marker, other parameters,
    or a file it recorded (its outputs, and with ``inputs`` what it read) that no longer has the hash
    it ran with."""
    try:
        m = read_json(marker)
    except FileNotFoundError:
        return NOT_RUN_YET
    except (OSError, ValueError):
        return "its marker is unreadable"
    if not isinstance(m, dict) or m.get("params_hash") != params_hash:
        return "its parameters (or those of its inputs) changed"
    if not isinstance(m.get("outputs"), dict) or not isinstance(m.get("inputs"), dict):
        return "its marker records no content hashes (written by an older ltnb)"
    return integrity.record_problem(study_dir, {**(m["inputs"] if inputs else {}), **m["outputs"]})


def completeness(cell: Cell) -> str | None:
    """``None`` when ``cell`` is complete, else why not (see ``marker_problem``)."""
    return marker_problem(cell.marker, cell.params_hash, cell.study_dir)


def is_complete(cell: Cell) -> bool:
    """True when the cell's marker records this cell's parameters hash and every file it recorded
    still has its hash."""
    return completeness(cell) is None


def _marker_exists(study_dir: Path, key: str) -> bool:
    return (study_dir / key / paths.COMPLETE_MARKER).is_file()


# ------------------------------------------------------------------------------------ on a worker
def kernel_name() -> str:
    """The kernel papermill should start: ``python3`` when it resolves to this Python.

    jupyter_client replaces a kernelspec's ``python``/``python3`` command with ``sys.executable``, and
    ipykernel installs such a ``python3`` spec into the venv, so in the project venv this is
    ``python3``. If another ``python3`` spec shadows it (e.g. one in ``~/.local/share/jupyter`` for a
    different interpreter), install a spec for this interpreter into ``sys.prefix`` and use that.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    names = {"python", f"python{sys.version_info[0]}", "python%i.%i" % sys.version_info[:2]}
    for name in (KERNEL_NAME, FALLBACK_KERNEL):
        try:
            argv0 = ksm.get_kernel_spec(name).argv[0]
        except NoSuchKernel:
            continue
        if argv0 in names or os.path.realpath(argv0) == os.path.realpath(sys.executable):
            return name
    from ipykernel.kernelspec import install

    install(kernel_name=FALLBACK_KERNEL, prefix=sys.prefix, display_name=f"Python (ltnb, {sys.prefix})")
    return FALLBACK_KERNEL


class _TaskWatch:
    """Whether Dask still wants the running task; when it does not (the batch was killed or
    interrupted, the task cancelled), the cell's kernel is killed instead of running on for nothing."""

    def __init__(self):
        self.worker = self.key = None
        try:
            from distributed import get_worker

            self.worker = get_worker()
            self.key = self.worker.get_current_task()
        except Exception:  # noqa: BLE001 - not on a Dask worker (tests call run_cell directly)
            self.worker = None
        self.kernel_pid: int | None = None
        self.unwanted = False
        self._stop = threading.Event()

    def wanted(self) -> bool:
        if self.worker is None or self.key is None:
            return True
        ts = self.worker.state.tasks.get(self.key)
        return ts is not None and ts.state not in ("cancelled", "released", "forgotten")

    def kernel_started(self, pid: int) -> None:
        self.kernel_pid = pid
        if self.unwanted:
            self._kill()

    def _kill(self) -> None:
        if self.kernel_pid:
            try:
                os.killpg(self.kernel_pid, signal.SIGKILL)  # the kernel leads its own session
            except (ProcessLookupError, PermissionError):
                pass

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if not self.wanted():
                self.unwanted = True
                self._kill()

    def __enter__(self) -> "_TaskWatch":
        if self.worker is not None:
            threading.Thread(target=self._run, name="ltnb-task-watch", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


def _kernel_manager_class(on_start):
    """nbclient's kernel manager, telling ``on_start`` the kernel's process id once it runs."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        async def _async_post_start_kernel(self, **kw):
            await super()._async_post_start_kernel(**kw)
            process = getattr(self.provisioner, "process", None)
            if process is not None:
                on_start(process.pid)

    return KernelManager


def run_cell(spec: dict) -> dict:
    """Execute one cell's notebook (on a Dask worker); return a plain dict with the outcome.

    ``spec``: notebook, executed, cell_dir, marker, parameters, params_hash, stage, key, threads, cwd,
    study_dir, deps. Failures are returned, not raised, so one failing cell never disturbs the others.
    The cell's lock is held throughout: a cell another batch is running is waited for, and skipped
    when that batch completed it.
    """
    out = {"key": spec["key"], "executed": spec["executed"], "host": socket.gethostname()}
    with _TaskWatch() as watch:
        lock = integrity.CellLock(spec["cell_dir"])
        try:
            got = lock.acquire(wait=True, should_stop=lambda: not watch.wanted())
        except OSError as e:  # a read-only or full outputs folder: the cell fails, saying where
            return {**out, "status": "failed", "ename": type(e).__name__, "seconds": 0.0,
                    "evalue": f"cannot take the cell's lock: {os_error(e, lock.path)}"}
        if not got:
            return {**out, "status": "failed", "ename": "Cancelled", "evalue": "cancelled while waiting for the cell's lock",
                    "seconds": 0.0}
        try:
            # this batch found the cell incomplete; complete now means another batch has run it meanwhile
            if marker_problem(spec["marker"], spec["params_hash"], spec["study_dir"]) is None:
                detail = "while this one waited for it" if lock.waited else "since this batch started"
                return {**out, "status": "skipped", "detail": f"completed by another batch {detail}", "seconds": 0.0}
            return _run_cell(spec, out, watch)
        finally:
            lock.release()


def _run_cell(spec: dict, out: dict, watch: _TaskWatch) -> dict:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    threads = str(int(spec["threads"]))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", TORCH_THREADS_ENV):
        os.environ[var] = threads  # the kernel is a child process and inherits these
    # the notebook takes its values from the plan alone, never from what the study recorded (ltnb.study.recorded)
    os.environ[CELL_ENV] = spec["key"]
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the OS).
    # Inherited by the kernel, it makes glibc unmap and re-fault torch's large buffers on every step:
    # a demo chain took 55 s instead of 34 s, 19 s of it in the kernel. The kernel gets glibc's default.
    os.environ.pop(KERNEL_UNSET_ENV, None)
    marker = Path(spec["marker"])
    Path(spec["cell_dir"]).mkdir(parents=True, exist_ok=True)
    if marker.exists():  # a stale marker (other parameters) must not survive a crash of this run
        marker.unlink()
    start = time.time()
    try:
        papermill.execute_notebook(
            spec["notebook"], spec["executed"], parameters=spec["parameters"], kernel_name=kernel_name(),
            cwd=spec["cwd"], progress_bar=False, log_output=False,
            # quiet the kernel's own log (ipykernel 7 warns about TCP on every start); errors in the
            # notebook still arrive as PapermillExecutionError and in the executed notebook
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
            kernel_manager_class=_kernel_manager_class(watch.kernel_started),
        )
    except PapermillExecutionError as e:
        return {**out, "status": "failed", "ename": e.ename, "evalue": e.evalue, **_times(spec, start)}
    except Exception as e:  # noqa: BLE001 - kernel died, notebook unreadable, ...: a failed cell
        return {**out, "status": "failed", "ename": type(e).__name__, "evalue": str(e), **_times(spec, start)}
    seconds = time.time() - start
    if watch.unwanted:
        return {**out, "status": "failed", "ename": "Cancelled", "evalue": "the batch no longer wants this cell",
                "seconds": seconds}
    study = Path(spec["study_dir"])
    write_json(marker, {
        "params_hash": spec["params_hash"],
        # sha256 of what the cell wrote for later cells, and of what it read from earlier ones: the
        # cell stays complete only while these files are unchanged
        "outputs": stages.cell_outputs(study, spec["key"]),
        "inputs": stages.cell_inputs(study, spec["deps"]),
        "stage": spec["stage"],
        "cell": spec["key"],
        "parameters": spec["parameters"],
        "notebook": spec["notebook"],
        "executed": spec["executed"],
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "host": out["host"],
        "python": sys.executable,
    })
    return {**out, "status": "done", **_times(spec, start)}


def _times(spec: dict, start: float) -> dict:
    """The cell's wall seconds, start and end, and the seconds its notebook spent training."""
    end = time.time()
    return {"seconds": end - start, "start": start, "end": end, "training": training_seconds(spec["executed"])}


TRAIN_TAG = "train"


def training_seconds(executed: str | os.PathLike) -> float:
    """Seconds the executed notebook spent in its cells tagged ``train`` (papermill records every
    cell's duration in its metadata); 0 for notebooks that do not train."""
    import nbformat

    try:
        nb = nbformat.read(str(executed), as_version=4)
    except Exception:  # noqa: BLE001 - an unreadable record counts as no training, not as a failure
        return 0.0
    return float(sum((c.metadata.get("papermill", {}).get("duration") or 0.0) for c in nb.cells
                     if TRAIN_TAG in c.metadata.get("tags", [])))


def _spec(cell: Cell, plan: Plan, threads: int) -> dict:
    return {
        "notebook": str(cell.notebook), "executed": str(cell.executed), "cell_dir": str(cell.cell_dir),
        "marker": str(cell.marker), "parameters": cell.parameters, "params_hash": cell.params_hash,
        "stage": cell.stage, "key": cell.key, "threads": threads, "cwd": str(plan.root),
        "study_dir": str(cell.study_dir), "deps": list(cell.deps) + list(cell.external),
    }


# ------------------------------------------------------------------------------------ summary
@dataclass
class Outcome:
    cell: Cell
    state: str  # done | skipped | failed | not run
    detail: str = ""  # failed: "ename: evalue"; not run: the reason
    seconds: float = 0.0
    training: float = 0.0  # seconds in the notebook's training cells
    start: float = 0.0
    end: float = 0.0
    host: str = ""


@dataclass
class RunTimes:
    """What the workers did with their time during one batch run."""
    workers: int
    started: float
    ended: float

    @property
    def worker_seconds(self) -> float:
        return self.workers * max(self.ended - self.started, 0.0)


TIMES_FILE = "batch_times.csv"


def write_times(plan: Plan, outcomes: list[Outcome], run: RunTimes, estimate: dict | None) -> Path:
    """``<study>/batch_times.csv``: per cell run in this batch, wall, training and overhead seconds
    (and the estimate), plus a last row ``(idle)`` with the workers' time outside any cell."""
    import pandas as pd

    from ltnb.base._io import write_text

    ran = [o for o in outcomes if o.state in ("done", "failed")]
    est = (estimate or {}).get("cells", {})
    rows = [{"cell": o.cell.key, "stage": o.cell.stage, "status": o.state, "host": o.host,
             "start": round(o.start - run.started, 3), "wall": round(o.seconds, 3), "training": round(o.training, 3),
             "overhead": round(max(o.seconds - o.training, 0.0), 3), "estimate": round(est.get(o.cell.key, float("nan")), 3)}
            for o in ran]
    busy = sum(o.seconds for o in ran)
    rows.append({"cell": "(idle)", "stage": "", "status": "", "host": "", "start": 0.0,
                 "wall": round(max(run.worker_seconds - busy, 0.0), 3), "training": 0.0,
                 "overhead": round(max(run.worker_seconds - busy, 0.0), 3), "estimate": float("nan")})
    return write_text(plan.study_dir / TIMES_FILE, pd.DataFrame(rows).to_csv(index=False))


def print_times(outcomes: list[Outcome], run: RunTimes, estimate: dict | None, out: TextIO) -> None:
    """The split of the workers' time, and the estimate against what happened."""
    from ltnb.study.estimate import fmt_seconds

    ran = [o for o in outcomes if o.state in ("done", "failed")]
    if not ran or run.worker_seconds <= 0:
        return
    total = run.worker_seconds
    training = sum(o.training for o in ran)
    busy = sum(o.seconds for o in ran)
    print(f"  worker time: {fmt_seconds(total)} ({run.workers} worker(s) x {fmt_seconds(run.ended - run.started)}): "
          f"training {100 * training / total:.1f}%, other work in cells (kernel start, imports, other cells, "
          f"cells that do not train) {100 * (busy - training) / total:.1f}%, idle (scheduling, waiting on inputs) "
          f"{100 * max(total - busy, 0) / total:.1f}%", file=out)
    tr = [o for o in ran if stages.STAGES[o.cell.stage].cost == "chains"]
    if tr:
        t_wall = sum(o.seconds for o in tr)
        t_train = sum(o.training for o in tr)
        print(f"  training cells: overhead {100 * (t_wall - t_train) / t_wall:.1f}% of their {fmt_seconds(t_wall)}", file=out)
    if estimate:
        print(f"  estimate vs actual: {fmt_seconds(estimate['wall'])} estimated, {fmt_seconds(run.ended - run.started)} "
              f"actual wall ({(run.ended - run.started) / max(estimate['wall'], 1e-9):.2f}x)", file=out)

def _fmt_params(cell: Cell) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(cell.params.items()))


def print_summary(outcomes: list[Outcome], plan: Plan, out: TextIO, *, interrupted: bool = False,
                  run: RunTimes | None = None, estimate: dict | None = None) -> None:
    groups = {s: [o for o in outcomes if o.state == s] for s in ("done", "skipped", "failed", "not run")}
    title = "partial summary (interrupted)" if interrupted else "summary"
    print(f"\n{title}: study {plan.study} at {plan.study_dir}", file=out)
    print(f"  done:    {len(groups['done'])}", file=out)
    print(f"  skipped: {len(groups['skipped'])} (complete)", file=out)
    print(f"  failed:  {len(groups['failed'])}", file=out)
    for o in groups["failed"]:
        print(f"    {o.cell.key}: {o.detail}\n      notebook: {o.cell.executed}", file=out)
    print(f"  not run: {len(groups['not run'])}", file=out)
    for o in groups["not run"]:
        print(f"    {o.cell.key}: {o.detail}", file=out)
    if run is not None:
        print_times(outcomes, run, estimate, out)


def print_dry_run(plan: Plan, cells: list[Cell], out: TextIO) -> None:
    print(f"plan {plan.path} -> study {plan.study} at {plan.study_dir} ({len(cells)} cells); {plan.outputs}", file=out)
    for c in cells:
        why = completeness(c)
        state = "complete" if why is None else "to run"
        print(f"  [{state:>8}] {c.stage:<10} {c.key:<45} {_fmt_params(c)}\n             -> {c.cell_dir}", file=out)
        if why not in (None, NOT_RUN_YET):
            print(f"             rerun: {why}", file=out)
    if plan.peaks:
        from ltnb.study.memory import fmt_bytes, machine_bytes

        worst = max(plan.peaks.values())
        print(f"peak memory per training cell: about {fmt_bytes(worst[0])} at most ({worst[1]}; "
              f"ltnb.study.memory), this machine has {fmt_bytes(machine_bytes())}", file=out)


def clean_leftovers(plan: Plan) -> list[Path]:
    """Remove the temporary files killed writes left in the study's cell folders, skipping the folders
    of cells another batch is running now (their locks are held)."""
    locks, free = [], []
    try:
        for c in plan.cells:
            if not c.cell_dir.is_dir():  # no batch holds it (locks live in cell folders); its chains may exist
                free.append(c)
                continue
            lock = integrity.CellLock(c.cell_dir)
            try:
                if lock.acquire(wait=False):
                    locks.append((c, lock))
            except OSError:  # a folder this user cannot write: nothing of ours to clean there (the cell,
                continue     # if it runs, fails with the path)
        removed = []
        for c in [c for c, _ in locks] + free:
            for folder in integrity.cell_folders(c.study_dir, c.key):  # its own folder and its chains'
                removed += integrity.clean_temp_files(folder)
        return removed
    finally:
        for _, lock in locks:
            lock.release()


# ------------------------------------------------------------------------------------ running
def default_workers(threads_per_worker: int) -> int:
    """One worker per ``threads_per_worker`` cores this process may use (at least one)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, threads_per_worker))


def main(plan_path, *, workers: int | None = None, scheduler: str | None = None, only: str | None = None,
         dry_run: bool = False, threads_per_worker: int | None = None, out: TextIO | None = None,
         worker_timeout: float = WORKER_TIMEOUT_S, estimate: bool | None = None) -> int:
    """Run (or list, with ``dry_run``) the plan; return the exit code (0 ok, 1 failures or no worker,
    2 bad plan or arguments, 130 interrupted). ``worker_timeout``: seconds without any Dask worker
    after which the batch stops. ``estimate``: print the time estimate first (default: on, unless
    ``$LTNB_ESTIMATE=0``; the first estimate for a model measures its rates, 10-40 s)."""
    out = out or sys.stdout
    try:
        plan = load_plan(plan_path)
    except PlanError as e:
        print(e, file=sys.stderr)
        return 2
    threads = int(threads_per_worker or 1)
    if threads < 1 or (workers is not None and int(workers) < 1):
        print("--workers and --threads must be at least 1", file=sys.stderr)
        return 2
    if not worker_timeout > 0:
        print("--worker-timeout must be a positive number of seconds", file=sys.stderr)
        return 2
    if only is not None and only not in plan.stages:
        print(f"--only {only!r}: not a stage of {plan.path}; its stages: {', '.join(plan.stages)}", file=sys.stderr)
        return 2
    selected = [c for c in plan.cells if only is None or c.stage == only]
    if estimate is None:
        estimate = os.environ.get("LTNB_ESTIMATE", "1") not in ("0", "off", "false")
    if dry_run:
        print_dry_run(plan, selected, out)
        todo = [c for c in selected if completeness(c) is not None]
        est = _estimate(plan, todo, _workers_for(workers, threads, todo), threads, out) if estimate else None
        if est:
            from ltnb.study.estimate import print_summary as print_estimate

            print_estimate(est, out)
        return 0

    removed = clean_leftovers(plan)
    complete, todo, recheck, outcomes, stale = _what_to_run(plan, selected)
    n_workers = _workers_for(workers, threads, todo + recheck)
    est = _estimate(plan, todo + recheck, n_workers, threads, out) if estimate else None
    print(f"plan {plan.path}: study {plan.study} at {plan.study_dir}; {len(selected)} cells, "
          f"{len(selected) - len(todo) - len(recheck)} complete, {len(todo)} to run"
          + (f", {len(recheck)} to check again once their inputs have run" if recheck else "")
          + (f"; estimated {_fmt(est['wall'])} on {n_workers} worker(s)" if est else ""), file=out)
    if removed:
        print(f"removed {len(removed)} leftover temporary file(s) of interrupted writes", file=out)
    for c, w in stale[:20]:
        print(f"rerun    {c.key}: {w}", file=out)
    if len(stale) > 20:
        print(f"rerun    ... and {len(stale) - 20} more", file=out)
    if not todo and not recheck:
        print_summary(list(outcomes.values()), plan, out)
        return 0
    run = RunTimes(n_workers, time.time(), time.time())
    previous = None
    if threading.current_thread() is threading.main_thread():  # `kill` of the batch: as Ctrl-C, cells cancelled

        def _terminate(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code = _execute(plan, todo, complete, outcomes, workers=workers, scheduler=scheduler, threads=threads, out=out,
                        recheck=recheck, worker_timeout=float(worker_timeout), run=run)
    finally:
        run.ended = time.time()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    ordered = [outcomes[c.key] for c in selected if c.key in outcomes]
    _record(plan, ordered, run, est, threads=threads)
    print_summary(ordered, plan, out, interrupted=code == 130, run=run, estimate=est)
    if code:
        return code
    return 1 if any(o.state in ("failed", "not run") for o in ordered) else 0


def _workers_for(workers: int | None, threads: int, cells: list) -> int:
    return max(1, min(int(workers) if workers else default_workers(threads), max(len(cells), 1)))


def _what_to_run(plan: Plan, selected: list[Cell]):
    """Which cells are complete, which run, which are decided once their inputs have rerun (a cell
    reading from cells that rerun is decided after them, when its own outputs are intact: a rerun that
    restores a changed input, or rewrites it as it was, leaves it complete), the skipped outcomes, and
    the cells that rerun with why."""
    why = {c.key: completeness(c) for c in plan.cells}
    complete = {k: w is None for k, w in why.items()}
    outcomes: dict[str, Outcome] = {}
    todo, recheck, rerunning = [], [], set()
    for c in selected:
        deps_rerun = any(d in rerunning for d in c.deps)
        if complete[c.key] and not deps_rerun:
            outcomes[c.key] = Outcome(c, "skipped")
            continue
        own = None if complete[c.key] else marker_problem(c.marker, c.params_hash, c.study_dir, inputs=False)
        (recheck if deps_rerun and own is None else todo).append(c)
        rerunning.add(c.key)
    stale = [(c, why[c.key]) for c in todo if why[c.key] != NOT_RUN_YET]
    return complete, todo, recheck, outcomes, stale


def _fmt(seconds: float) -> str:
    from ltnb.study.estimate import fmt_seconds

    return fmt_seconds(seconds)


def _estimate(plan: Plan, todo: list[Cell], workers: int, threads: int, out: TextIO) -> dict | None:
    """The estimate for the cells to run (``ltnb.study.estimate``); None, with a note, if it cannot be made."""
    if not todo:
        return None
    from ltnb.study import estimate

    keys = {c.key for c in todo}
    sub = Plan(path=plan.path, root=plan.root, study=plan.study, study_dir=plan.study_dir, stages=plan.stages,
               cells=tuple(Cell(stage=c.stage, key=c.key, notebook=c.notebook, study_dir=c.study_dir, cell_dir=c.cell_dir,
                                params=c.params, settings_names=c.settings_names,
                                deps=tuple(d for d in c.deps if d in keys), params_hash=c.params_hash)
                           for c in plan.cells if c.key in keys))
    try:
        return estimate.summary(sub, workers, threads=threads, log=lambda m: print(m, file=out))
    except Exception as e:  # noqa: BLE001 - an estimate must never stop a run
        print(f"(no time estimate: {type(e).__name__}: {e})", file=out)
        return None


def _record(plan: Plan, outcomes: list[Outcome], run: RunTimes, est: dict | None, *, threads: int = 1) -> None:
    """batch_times.csv, the measured overheads, and what the finished trainings teach later estimates
    (``ltnb.study.estimate.learn``); never fails the batch."""
    try:
        write_times(plan, outcomes, run, est)
        from ltnb.study import estimate

        raw, keys = (est or {}).get("raw_training", {}), (est or {}).get("model_keys", {})
        estimate.record_run([{"stage": o.cell.stage, "status": o.state, "wall": o.seconds, "training": o.training,
                              "raw_training": raw.get(o.cell.key, 0.0), "model_key": keys.get(o.cell.key, ""),
                              "overhead": max(o.seconds - o.training, 0.0)}
                             for o in outcomes if o.state == "done"], workers=(est or {}).get("workers"))
        estimate.learn(plan, [(o.cell, o.training) for o in outcomes if o.state == "done"],  # chains only
                       workers=run.workers, threads=threads)
    except OSError as e:  # a read-only or full outputs folder: one line naming the path
        print(f"(could not record the batch's times: {os_error(e)})", file=sys.stderr)
    except Exception as e:  # noqa: BLE001
        print(f"(could not record the batch's times: {type(e).__name__}: {e})", file=sys.stderr)


def _blocker(cell: Cell, plan: Plan, state: dict[str, str], complete: dict[str, bool]) -> str | None:
    """Why ``cell`` cannot run: ``""`` while an input is still running (decide once all are settled,
    so the reason names every failed input), ``None`` when it is ready."""
    bad: list[str] = []
    for dep in cell.deps:
        s = state.get(dep)
        if s in ("done", "skipped") or (s is None and complete.get(dep)):
            continue
        if s in ("pending", "running"):
            return ""
        if s is None:  # not selected (--only) and not complete
            bad.append(f"input {dep} is not complete; run its stage first (without --only)")
        else:
            bad.append(f"input {dep} {'failed' if s == 'failed' else 'was not run'}")
    for key in cell.external:
        if not _marker_exists(plan.study_dir, key):
            bad.append(f"input {key} is not produced by this plan and is not complete in {plan.study_dir}")
    if not bad:
        return None
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    return "; ".join(bad[:3]) + more


class _NoWorkers(RuntimeError):
    pass


def _lost_workers(client, busy: dict[str, list[str]], futures: dict, out: TextIO) -> dict[str, list[str]]:
    """Say when a worker has left the cluster (killed, its machine gone) while it ran cells: Dask runs
    them again on the others, and the interrupted chains resume from their finished rounds. Returns what
    each worker runs now (the next call's ``busy``)."""
    try:
        processing = client.processing()
    except Exception:  # noqa: BLE001 - scheduler unreachable: the no-worker timeout handles it
        return busy
    cells = {f.key: c.key for f, c in futures.items()}
    now = {w: [cells[k] for k in keys if k in cells] for w, keys in processing.items()}
    for w, was in busy.items():
        if w not in now and was:
            print(f"worker {w} left the cluster while it ran {', '.join(was)}; "
                  f"{'it runs' if len(was) == 1 else 'they run'} again on the other workers, resuming from the "
                  "finished rounds", file=out, flush=True)
    return now


def _n_workers(client) -> int:
    try:
        return len(client.nthreads())
    except Exception:  # noqa: BLE001 - scheduler unreachable: no worker either
        return 0


class _Execution:
    """One batch's cells on a Dask cluster: which cells wait for which, what each worker runs, what each
    finished cell returned (``_execute`` drives it: connect, release the ready cells, collect, repeat)."""

    def __init__(self, plan: Plan, todo: list[Cell], complete: dict[str, bool], outcomes: dict[str, Outcome], *,
                 threads: int, out: TextIO, recheck: list[Cell], worker_timeout: float):
        from tqdm.auto import tqdm

        self.plan, self.complete, self.outcomes, self.threads, self.out = plan, complete, outcomes, threads, out
        self.worker_timeout = worker_timeout
        self.state: dict[str, str] = {k: o.state for k, o in outcomes.items()}
        keys = {c.key for c in todo} | {c.key for c in recheck}
        self.recheck_keys = {c.key for c in recheck}
        self.pending = [c for c in plan.cells if c.key in keys]
        for c in self.pending:
            self.state[c.key] = "pending"
        self.n_todo = len(todo)
        self.cluster = self.client = self.address = None
        self.bar = tqdm(total=len(self.pending), unit="cell", desc=f"ltnb {plan.study}", file=sys.stderr,
                        dynamic_ncols=True)
        self.futures: dict[Any, Cell] = {}
        self.seen_worker, self.none_since, self.next_check = False, None, 0.0
        self.busy: dict[str, list[str]] = {}  # worker address -> the cells it was running at the last look

    def connect(self, scheduler: str | None, workers: int | None) -> None:
        from distributed import Client, LocalCluster

        if scheduler:
            self.client = Client(scheduler)
        else:
            n = max(1, min(int(workers) if workers else default_workers(self.threads), self.n_todo))
            self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
            self.client = Client(self.cluster)
        self.address = scheduler or self.cluster.scheduler_address

    def finish(self, cell: Cell, st: str, detail: str = "", seconds: float = 0.0, r: dict | None = None) -> None:
        self.state[cell.key] = st
        r = r or {}
        self.outcomes[cell.key] = Outcome(cell, st, detail, seconds, training=r.get("training", 0.0),
                                          start=r.get("start", 0.0), end=r.get("end", 0.0), host=r.get("host", ""))
        line = {"done": f"done     {cell.key} ({seconds:.1f} s)",
                "skipped": f"skipped  {cell.key}: {detail}",
                "failed": f"FAILED   {cell.key}: {detail} -> {cell.executed}",
                "not run": f"not run  {cell.key}: {detail}"}[st]
        self.bar.write(line, file=self.out)
        self.bar.update(1)

    def release(self, ac) -> None:
        """Submit every pending cell whose inputs are done; mark those whose inputs failed."""
        changed = True
        while changed:
            changed = False
            for c in list(self.pending):
                why = _blocker(c, self.plan, self.state, self.complete)
                if why == "":
                    continue
                self.pending.remove(c)
                changed = True
                if why is not None:
                    self.finish(c, "not run", why)
                    continue
                if c.key in self.recheck_keys:
                    problem = completeness(c)
                    if problem is None:
                        self.finish(c, "skipped", "complete; what it read is as it was when it ran")
                        continue
                    self.bar.write(f"rerun    {c.key}: {problem}", file=self.out)
                self.state[c.key] = "running"
                f = self.client.submit(run_cell, _spec(c, self.plan, self.threads),
                                       key=f"ltnb-{self.plan.study}-{c.key}-{time.time_ns()}", pure=False, retries=0)
                self.futures[f] = c
                ac.add(f)

    def watch(self) -> None:
        """Nothing finished: name the workers that left with their cells; stop when none is left for
        ``worker_timeout`` seconds."""
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + 1.0
        self.busy = _lost_workers(self.client, self.busy, self.futures, self.out)
        if _n_workers(self.client):
            self.seen_worker, self.none_since = True, None
        elif self.none_since is None:
            self.none_since = now
        elif now - self.none_since >= self.worker_timeout:
            raise _NoWorkers(
                f"no Dask worker {'is left' if self.seen_worker else 'has connected'} at the scheduler {self.address} "
                f"(none for {self.worker_timeout:.0f} s); stopping. Start workers (dask worker {self.address}) and "
                f"run the batch again: complete cells are kept, interrupted chains resume.")

    def collect(self, f) -> None:
        """Record what a finished future's cell returned."""
        c = self.futures.pop(f)
        try:
            r = f.result()
        except Exception as e:  # noqa: BLE001 - worker killed (KilledWorker), cancelled, ...
            self.finish(c, "failed", f"{type(e).__name__}: {e}")
            return
        if r["status"] == "done":
            self.finish(c, "done", seconds=r["seconds"], r=r)
        elif r["status"] == "skipped":
            self.finish(c, "skipped", r["detail"])
        else:
            self.finish(c, "failed", f"{r['ename']}: {r['evalue']}", r["seconds"], r=r)

    def stop(self, e: BaseException) -> int:
        """Interrupted, or no worker left: cancel what runs, mark every unfinished cell "not run"."""
        if self.client is not None and self.futures:
            try:
                self.client.cancel(list(self.futures))
            except Exception:  # noqa: BLE001 - best effort while shutting down
                pass
        if isinstance(e, _NoWorkers):
            self.bar.write(f"ltnb batch: {e}", file=self.out)
        reason = "no Dask worker left" if isinstance(e, _NoWorkers) else "interrupted"
        for c in list(self.futures.values()) + self.pending:
            self.outcomes[c.key] = Outcome(c, "not run", reason)
        return 1 if isinstance(e, _NoWorkers) else 130

    def close(self) -> None:
        self.bar.close()
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close(timeout=10)
                except Exception:  # noqa: BLE001
                    pass


def _execute(plan: Plan, todo: list[Cell], complete: dict[str, bool], outcomes: dict[str, Outcome], *,
             workers: int | None, scheduler: str | None, threads: int, out: TextIO, recheck: list[Cell] = (),
             worker_timeout: float = WORKER_TIMEOUT_S, run: RunTimes | None = None) -> int:
    from distributed import as_completed

    ex = _Execution(plan, todo, complete, outcomes, threads=threads, out=out, recheck=list(recheck),
                    worker_timeout=worker_timeout)
    try:
        ex.connect(scheduler, workers)
        if run is not None:  # worker time counts from when the workers are there
            run.workers, run.started = max(1, _n_workers(ex.client)), time.time()
        ac = as_completed()
        ex.release(ac)
        while not ac.is_empty():
            ready = ac.next_batch(block=False)
            if not ready:
                ex.watch()
                time.sleep(0.1)
                continue
            for f in ready:
                ex.collect(f)
                ex.release(ac)
            # hold no finished future: while one is held the scheduler keeps its result on the worker that
            # ran it, and losing that worker makes Dask run the settled cell again
            del f, ready
        return 0
    except (KeyboardInterrupt, _NoWorkers) as e:
        return ex.stop(e)
    finally:
        ex.close()
