"""ltnb: lottery tickets under distribution shift (Desai, Zhan & Aly, 2019), as a runnable study.

A thin helper package for the notebooks in ``notebooks/``, in four layers; a module imports only from
its own layer or the ones below it (``lint-imports`` checks it in CI, with the contracts in
``pyproject.toml``):

1. **data and vocabulary**: ``corpus`` (the built-in corpus, fetched and verified), ``amazon`` (the
   paper's files), ``data`` (balance, split, de-duplicate), ``vocab`` (SentencePiece, encodings),
   ``tokens`` (the encoded ids), ``divergence`` (Figure 1's JSD);
2. **the engine**: ``model`` (the Kim CNN), ``pruning`` (masks, the magnitude step), ``sparse``
   (sparse kernels), ``train`` (masked Adam, best epoch), ``strategies`` (initial values),
   ``tickets`` (safetensors files), ``lottery`` (IMP chains and transfers, resumable);
3. **the study**: ``plan`` (batch plans, checked before anything runs), ``estimate`` (how long a plan
   takes here), ``batch`` (papermill on Dask);
4. **analysis**: ``results`` (all result rows), ``plots`` (every chart), ``phase`` (the transition
   statistics), ``findings`` (verdicts on the paper's claims), ``report``, ``explore`` (the widget
   app). Analysis imports no torch, so the report and the explorer start fast.

Below them all: ``stages`` (each stage of a study written once: notebook, settings, cell folder,
dependencies, output files, cost model), ``paths`` (the study's layout), ``integrity`` (hashes and
checks), ``config`` (every setting, defined once with its check), ``labels`` (the names of curves and
sparsities) and ``_io`` (atomic writes, hashes); above them all: ``cli`` (the ``ltnb`` command).
"""

__version__ = "0.1.0"
