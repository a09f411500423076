"""Running a study: ``plan`` (batch plans, checked before anything runs), ``estimate`` (how long a plan
takes here), ``batch`` (papermill on Dask), ``recorded`` (what a study ran: the values a notebook opens with), ``federated`` (federated runs with a ticket on Flower, a
package: ``protocol``, what travels, without Flower or Ray; ``flower``, the apps and the bytes they
send; ``simulation``, Flower's engine on a supervised Ray cluster).
Stands on ``ltnb.core``, ``ltnb.text`` and ``ltnb.base``."""
