"""Running a study: ``plan`` (batch plans, checked before anything runs), ``estimate`` (how long a plan
takes here), ``batch`` (papermill on Dask), ``federated`` (federated runs with a ticket on Flower).
Stands on ``ltnb.core``, ``ltnb.text`` and ``ltnb.base``."""
