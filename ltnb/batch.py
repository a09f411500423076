"""Run a batch plan: execute the cells that are not complete with papermill, in parallel on Dask.

``main(plan_path, ...)`` is what ``ltnb batch PLAN`` calls. What it does:

1. Load and check the plan (``ltnb.plan.load_plan``); on any problem print them all and return 2,
   having run nothing and created nothing.
2. Find the complete cells: ``<cell_dir>/_COMPLETE.json`` exists and holds the cell's
   ``params_hash``. ``--dry-run`` lists every cell with its state and stops there.
3. Submit each remaining cell to Dask once the cells it reads from are done: a
   ``distributed.LocalCluster`` (one process per worker, one task per worker, ``cores // threads``
   workers) by default, or the scheduler at ``scheduler`` so many machines sharing the outputs folder
   run one plan. A cell whose input failed is not run, with the reason.
4. On a worker, ``run_cell`` executes the notebook with papermill into ``<cell_dir>/<stem>.ipynb``
   (kept as the record of what ran, also when it failed), with ``OMP_NUM_THREADS``,
   ``MKL_NUM_THREADS`` and ``LTNB_TORCH_THREADS`` set for the kernel, and writes the marker
   atomically only when the notebook finished without error. A cell killed mid-way has no marker,
   so the next run reruns it (and its notebook resumes from its finished rounds).
5. Print a summary (done, skipped, failed with notebook path and error, not run with reason) and
   return 0, 1 when anything failed or was not run, or 130 after Ctrl-C (pending cells cancelled,
   cluster closed, partial summary printed).

The papermill working directory of every cell is the plan's root (see ``ltnb.plan``), so relative
paths in parameters (e.g. ``amazon_files``) resolve against it.
"""
from __future__ import annotations

import datetime as _dt
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ltnb import paths
from ltnb._io import read_json, write_json
from ltnb.plan import Cell, Plan, PlanError, load_plan

TORCH_THREADS_ENV = "LTNB_TORCH_THREADS"
KERNEL_UNSET_ENV = "MALLOC_TRIM_THRESHOLD_"
KERNEL_NAME = "python3"
FALLBACK_KERNEL = "ltnb-venv"


# ------------------------------------------------------------------------------------ completeness
def is_complete(cell: Cell) -> bool:
    """True when the cell's marker exists and records this cell's parameters hash."""
    try:
        marker = read_json(cell.marker)
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("params_hash") == cell.params_hash


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


def run_cell(spec: dict) -> dict:
    """Execute one cell's notebook (on a Dask worker); return a plain dict with the outcome.

    ``spec``: notebook, executed, cell_dir, marker, parameters, params_hash, stage, key, threads, cwd.
    Failures are returned, not raised, so one failing cell never disturbs the others.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    threads = str(int(spec["threads"]))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", TORCH_THREADS_ENV):
        os.environ[var] = threads  # the kernel is a child process and inherits these
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the OS).
    # Inherited by the kernel, it makes glibc unmap and re-fault torch's large buffers on every step:
    # a demo chain took 55 s instead of 34 s, 19 s of it in the kernel. The kernel gets glibc's default.
    os.environ.pop(KERNEL_UNSET_ENV, None)
    marker = Path(spec["marker"])
    Path(spec["cell_dir"]).mkdir(parents=True, exist_ok=True)
    if marker.exists():  # a stale marker (other parameters) must not survive a crash of this run
        marker.unlink()
    start = time.time()
    out = {"key": spec["key"], "executed": spec["executed"], "host": socket.gethostname()}
    try:
        papermill.execute_notebook(
            spec["notebook"], spec["executed"], parameters=spec["parameters"], kernel_name=kernel_name(),
            cwd=spec["cwd"], progress_bar=False, log_output=False,
            # quiet the kernel's own log (ipykernel 7 warns about TCP on every start); errors in the
            # notebook still arrive as PapermillExecutionError and in the executed notebook
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except PapermillExecutionError as e:
        return {**out, "status": "failed", "ename": e.ename, "evalue": e.evalue, "seconds": time.time() - start,
                "start": start, "end": time.time(), "training": training_seconds(spec["executed"])}
    except Exception as e:  # noqa: BLE001 - kernel died, notebook unreadable, ...: a failed cell
        return {**out, "status": "failed", "ename": type(e).__name__, "evalue": str(e), "seconds": time.time() - start,
                "start": start, "end": time.time(), "training": training_seconds(spec["executed"])}
    seconds = time.time() - start
    out["training"] = training_seconds(spec["executed"])
    write_json(marker, {
        "params_hash": spec["params_hash"],
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
    return {**out, "status": "done", "seconds": seconds, "start": start, "end": time.time()}


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

    from ltnb._io import write_text

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
    from ltnb.estimate import fmt_seconds

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
    tr = [o for o in ran if o.cell.stage in ("obtain", "transfer")]
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
    print(f"plan {plan.path} -> study {plan.study} at {plan.study_dir} ({len(cells)} cells)", file=out)
    for c in cells:
        state = "complete" if is_complete(c) else "to run"
        print(f"  [{state:>8}] {c.stage:<10} {c.key:<45} {_fmt_params(c)}\n             -> {c.cell_dir}", file=out)


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
         estimate: bool | None = None) -> int:
    """Run (or list, with ``dry_run``) the plan; return the exit code (0 ok, 1 failures, 2 bad plan
    or arguments, 130 interrupted). ``estimate``: print the time estimate first (default: on, unless
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
    if only is not None and only not in plan.stages:
        print(f"--only {only!r}: not a stage of {plan.path}; its stages: {', '.join(plan.stages)}", file=sys.stderr)
        return 2
    selected = [c for c in plan.cells if only is None or c.stage == only]
    complete = {c.key: is_complete(c) for c in plan.cells}
    todo = [c for c in selected if not complete[c.key]]
    n_workers = max(1, min(int(workers) if workers else default_workers(threads), max(len(todo), 1)))
    if estimate is None:
        estimate = os.environ.get("LTNB_ESTIMATE", "1") not in ("0", "off", "false")
    est = _estimate(plan, todo, n_workers, out) if estimate else None
    if dry_run:
        print_dry_run(plan, selected, out)
        if est:
            from ltnb.estimate import print_summary as print_estimate

            print_estimate(est, out)
        return 0

    outcomes: dict[str, Outcome] = {}
    for c in selected:
        if complete[c.key]:
            outcomes[c.key] = Outcome(c, "skipped")
    print(f"plan {plan.path}: study {plan.study} at {plan.study_dir}; {len(selected)} cells, "
          f"{len(selected) - len(todo)} complete, {len(todo)} to run"
          + (f"; estimated {_fmt(est['wall'])} on {n_workers} worker(s)" if est else ""), file=out)
    if not todo:
        print_summary(list(outcomes.values()), plan, out)
        return 0
    run = RunTimes(n_workers, time.time(), time.time())
    code = _execute(plan, todo, complete, outcomes, workers=workers, scheduler=scheduler, threads=threads, out=out, run=run)
    run.ended = time.time()
    ordered = [outcomes[c.key] for c in selected if c.key in outcomes]
    _record(plan, ordered, run, est)
    print_summary(ordered, plan, out, interrupted=code == 130, run=run, estimate=est)
    if code:
        return code
    return 1 if any(o.state in ("failed", "not run") for o in ordered) else 0


def _fmt(seconds: float) -> str:
    from ltnb.estimate import fmt_seconds

    return fmt_seconds(seconds)


def _estimate(plan: Plan, todo: list[Cell], workers: int, out: TextIO) -> dict | None:
    """The estimate for the cells to run (``ltnb.estimate``); None, with a note, if it cannot be made."""
    if not todo:
        return None
    from ltnb import estimate

    keys = {c.key for c in todo}
    sub = Plan(path=plan.path, root=plan.root, study=plan.study, study_dir=plan.study_dir, stages=plan.stages,
               cells=tuple(Cell(stage=c.stage, key=c.key, notebook=c.notebook, study_dir=c.study_dir, cell_dir=c.cell_dir,
                                params=c.params, settings_names=c.settings_names,
                                deps=tuple(d for d in c.deps if d in keys), params_hash=c.params_hash)
                           for c in plan.cells if c.key in keys))
    try:
        return estimate.summary(sub, workers, log=lambda m: print(m, file=out))
    except Exception as e:  # noqa: BLE001 - an estimate must never stop a run
        print(f"(no time estimate: {type(e).__name__}: {e})", file=out)
        return None


def _record(plan: Plan, outcomes: list[Outcome], run: RunTimes, est: dict | None) -> None:
    """batch_times.csv, and the measured overheads for later estimates (never fails the batch)."""
    try:
        write_times(plan, outcomes, run, est)
        from ltnb import estimate

        estimate.record_run([{"stage": o.cell.stage, "status": o.state, "wall": o.seconds,
                              "overhead": max(o.seconds - o.training, 0.0)} for o in outcomes if o.state == "done"])
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


def _execute(plan: Plan, todo: list[Cell], complete: dict[str, bool], outcomes: dict[str, Outcome], *,
             workers: int | None, scheduler: str | None, threads: int, out: TextIO, run: RunTimes) -> int:
    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    state: dict[str, str] = {k: o.state for k, o in outcomes.items()}
    pending = list(todo)
    for c in todo:
        state[c.key] = "pending"
    cluster = client = None
    bar = tqdm(total=len(todo), unit="cell", desc=f"ltnb {plan.study}", file=sys.stderr, dynamic_ncols=True)
    futures: dict[Any, Cell] = {}

    def finish(cell: Cell, st: str, detail: str = "", seconds: float = 0.0, r: dict | None = None) -> None:
        state[cell.key] = st
        r = r or {}
        outcomes[cell.key] = Outcome(cell, st, detail, seconds, training=r.get("training", 0.0),
                                     start=r.get("start", 0.0), end=r.get("end", 0.0), host=r.get("host", ""))
        line = {"done": f"done     {cell.key} ({seconds:.1f} s)",
                "failed": f"FAILED   {cell.key}: {detail} -> {cell.executed}",
                "not run": f"not run  {cell.key}: {detail}"}[st]
        bar.write(line, file=out)
        bar.update(1)

    def release(ac) -> None:
        """Submit every pending cell whose inputs are done; mark those whose inputs failed."""
        changed = True
        while changed:
            changed = False
            for c in list(pending):
                why = _blocker(c, plan, state, complete)
                if why == "":
                    continue
                pending.remove(c)
                changed = True
                if why is not None:
                    finish(c, "not run", why)
                else:
                    state[c.key] = "running"
                    f = client.submit(run_cell, _spec(c, plan, threads), key=f"ltnb-{plan.study}-{c.key}-{time.time_ns()}",
                                      pure=False, retries=0)
                    futures[f] = c
                    ac.add(f)

    try:
        if scheduler:
            client = Client(scheduler)
            run.workers = max(1, len(client.scheduler_info().get("workers", {})))
        else:
            n = min(int(workers) if workers else default_workers(threads), len(todo))
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
            client = Client(cluster)
            run.workers = n
        run.started = time.time()  # worker time counts from when the workers are there
        ac = as_completed()
        release(ac)
        for f in ac:
            c = futures.pop(f)
            try:
                r = f.result()
            except Exception as e:  # noqa: BLE001 - worker killed (KilledWorker), cancelled, ...
                finish(c, "failed", f"{type(e).__name__}: {e}")
            else:
                if r["status"] == "done":
                    finish(c, "done", seconds=r["seconds"], r=r)
                else:
                    finish(c, "failed", f"{r['ename']}: {r['evalue']}", r["seconds"], r=r)
            release(ac)
        return 0
    except KeyboardInterrupt:
        if client is not None and futures:
            try:
                client.cancel(list(futures))
            except Exception:  # noqa: BLE001 - best effort while shutting down
                pass
        for c in list(futures.values()) + pending:
            outcomes[c.key] = Outcome(c, "not run", "interrupted")
        return 130
    finally:
        bar.close()
        for thing in (client, cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001
                    pass
