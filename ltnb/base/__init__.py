"""The base every layer stands on: ``registry`` (every strategy, defined once), ``config`` (every setting, defined once with its check), ``stages``
(each stage of a study written once), ``paths`` (a study's layout), ``integrity`` (hashes and checks),
``labels`` (the names of curves and sparsities), ``tensorfiles`` (safetensors read and check), ``_io``
(atomic writes, hashes). Imports nothing from the other layers."""
