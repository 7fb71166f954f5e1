"""Z-packing: a CiM layer's W[O, K] cut into G = ceil(K / V) vectors of V array rows per output.

K runs in (ky, kx, cin) order, cin fastest (``cimc.cim_ops.weight_matrix``), so layers with
cin < V still fill whole vectors (CIMPool Fig. 2); the last vector is zero-padded.
"""

from __future__ import annotations

import numpy as np


def n_slots(k: int, vector: int) -> int:
    """G: how many vectors of ``vector`` rows hold K weights."""
    return -(-k // vector)


def pack_vectors(w: np.ndarray, vector: int) -> np.ndarray:
    """W[O, K] -> [O, G, V], zero-padding K to a multiple of V (a view of W when K is one)."""
    o, k = w.shape
    g = n_slots(k, vector)
    if k == g * vector:
        return np.asarray(w, dtype=np.float64).reshape(o, g, vector)
    out = np.zeros((o, g * vector), dtype=np.float64)
    out[:, :k] = w
    return out.reshape(o, g, vector)
