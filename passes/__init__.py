"""Built-in passes, installed as ``cimc.passes``; importing this package registers them.

They use only the public API a user's own pass would use (``cimc.passes_base``, ``cimc.ir``,
``cimc.cim_ops``, ``cimc.calibration``).
"""

from . import (  # noqa: F401
    canonicalize,
    error_prune,
    error_term,
    fold_bn,
    lower,
    permute_schedule,
    quantize_act,
    quantize_weights,
    smooth_act,
    tile,
    weight_pool,
    zpack,
)

DEFAULT_COMPRESSION = "fold-bn,zpack,weight-pool,error-term,error-prune,quantize-act"
