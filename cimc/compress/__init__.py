"""The compression library: weight-pool, error-term, pruning and weight quantisation arithmetic.

The passes (``weight-pool``, ``error-term``, ``error-prune``, ``quantize-weights``) are thin
shells over these functions, and ``cimc.train`` calls the same ones, so a fine-tuned layer and
its compiled counterpart hold the same numbers.

- :mod:`.vectors`: z-packing W[O, K] into vectors of V rows
- :mod:`.pool`: the shared binary pool (k-means, random, Hadamard)
- :mod:`.assign`: indices into the pool and the scale alpha
- :mod:`.error_term`: the 1-bit error term, beta, and its structured pruning
- :mod:`.quantize`: per-channel int-N weights
- :mod:`.moments`: the calibration moments passed from weight-pool to the error passes
- :mod:`.layers`: which layers are compressed, and pool layers in the graph
- :mod:`.assignment_file`: the learned-assignment file (write, read, install)
"""

from .assign import RULES, SCALES, assign, refit_alpha
from .assignment_file import (
    ASSIGNMENT_FORMAT,
    install_assignment,
    read_assignment,
    write_assignment,
)
from .error_term import (
    KEEP_CHOICES,
    full_error,
    least_squares_beta,
    pool_residual,
    pruned_error,
    structured_mask,
)
from .layers import POOL_VALUE, add_pool, residual, select_layers, set_error, write_pool_layer
from .moments import SlotMoments, layer_moments
from .pool import INITS, POOL_SAMPLE, build_pool, make_pool, pool_sample
from .quantize import ROUNDINGS, WEIGHT_BITS, quantize_per_channel, quantized_weights, to_quant_mvm
from .vectors import n_slots, pack_vectors

__all__ = [
    "ASSIGNMENT_FORMAT",
    "INITS",
    "KEEP_CHOICES",
    "POOL_SAMPLE",
    "POOL_VALUE",
    "RULES",
    "SCALES",
    "WEIGHT_BITS",
    "SlotMoments",
    "add_pool",
    "assign",
    "build_pool",
    "full_error",
    "install_assignment",
    "layer_moments",
    "least_squares_beta",
    "make_pool",
    "n_slots",
    "pack_vectors",
    "pool_residual",
    "pool_sample",
    "pruned_error",
    "ROUNDINGS",
    "quantize_per_channel",
    "quantized_weights",
    "read_assignment",
    "refit_alpha",
    "residual",
    "select_layers",
    "set_error",
    "structured_mask",
    "to_quant_mvm",
    "write_assignment",
    "write_pool_layer",
]
