"""The paper's engine: ``model`` (the Kim CNN), ``pruning`` (masks, the magnitude step), ``strategies``
(initial values), ``train`` (masked Adam, best epoch), ``sparse`` (sparse kernels), ``tickets``
(safetensors files), ``lottery`` (IMP chains and transfers, resumable). Stands on ``ltnb.text`` and
``ltnb.base``."""
