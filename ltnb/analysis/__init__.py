"""Reading a study: ``results`` (all result rows), ``plots`` (every chart), ``phase`` (the transition
statistics), ``findings`` (verdicts on the paper's claims), ``federated_results``, ``report``,
``explore`` (the widget app). Imports no torch (a contract), so the report and the explorer start fast."""
