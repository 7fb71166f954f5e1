"""The learned-assignment file that ``cimc.train`` writes and ``weight-pool{assignment=FILE}``
installs as it is.

An .npz with ``format`` = ``cimc-assignment-1``, ``pool`` int8 [S, V], ``scheme`` (the
training scheme as JSON) and, per compressed layer, keyed ``<weight name>|<field>``: ``idx``
[O, G], ``alpha`` [1 or O], and with an error term ``err`` int8 [O, G, V], ``beta`` [1],
``keep``, and when keep < 1 ``mask`` bool [groups, G, V], ``group``, ``chunk`` (the
error-prune layout).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cimc.atomic import atomic_path
from cimc.cim_ops import dense_weights, weight_matrix
from cimc.errors import OptionError
from cimc.ir import Graph, Node

from .layers import add_pool, write_pool_layer
from .vectors import n_slots

ASSIGNMENT_FORMAT = "cimc-assignment-1"
Layers = dict[str, dict[str, np.ndarray]]  # weight initializer name -> field -> array


def write_assignment(path: str | Path, pool: np.ndarray, layers: Layers, scheme: str) -> None:
    """Write the file (atomically): the pool, each layer's fields, and the scheme as JSON."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(ASSIGNMENT_FORMAT),
        "scheme": np.array(scheme),
        "pool": pool.astype(np.int8),
    }
    for name, fields in layers.items():
        arrays.update({f"{name}|{key}": arr for key, arr in fields.items()})
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def read_assignment(path: str) -> tuple[np.ndarray, Layers]:
    """(pool, {weight initializer name: {field: array}}) from an assignment file."""
    file = Path(path)
    if not file.is_file():
        raise OptionError(
            f"weight-pool: assignment file {file} does not exist; give the .npz that "
            "cimc.train's export wrote next to the ONNX model"
        )
    try:
        with np.load(file) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise OptionError(
            f"weight-pool: assignment file {file} is not a readable .npz ({exc})"
        ) from None
    if str(data.get("format", "")) != ASSIGNMENT_FORMAT or "pool" not in data:
        raise OptionError(
            f"weight-pool: {file} is not a cimc assignment file (format {ASSIGNMENT_FORMAT}); "
            "write one with cimc.train.export_model"
        )
    layers: Layers = {}
    for key, arr in data.items():
        name, sep, field_ = key.rpartition("|")
        if sep:
            layers.setdefault(name, {})[field_] = arr
    return data["pool"], layers


def install_assignment(
    graph: Graph, path: str, pool_shape: tuple[int, int], chosen: list[Node]
) -> None:
    """Install a learned assignment as it is: pool, idx, alpha, and err/beta when present.

    ``pool_shape`` is the (pool, vector) weight-pool was given. Each chosen layer's weight must
    be what the file reconstructs (alpha P[idx] + beta err, to float32 precision): the ONNX
    that cimc.train exported holds exactly that weight. Layers get
    ``meta['compression']['learned'] = True``; error-term and error-prune leave them alone."""
    where = f"weight-pool: assignment file {path}"
    pool, layers = read_assignment(path)
    if pool.shape != pool_shape:
        raise OptionError(
            f"{where} holds a pool of {pool.shape[0]} x {pool.shape[1]} but the pass has "
            f"pool={pool_shape[0]}, vector={pool_shape[1]}; set weight-pool{{pool={pool.shape[0]},"
            f"vector={pool.shape[1]}}} and zpack{{vector={pool.shape[1]}}}"
        )
    names = {n.inputs[1] for n in chosen}
    extra, missing = sorted(set(layers) - names), sorted(names - set(layers))
    if extra or missing:
        raise OptionError(
            f"{where} does not match the graph: in the file but not compressed here: "
            f"{extra or 'none'}; compressed here but not in the file: {missing or 'none'}. "
            "Compile the ONNX model exported with that file, with the same skip-* options "
            "and without fold-bn (it renames and changes the weights)"
        )
    pool = pool.astype(np.int8)
    pool_value = add_pool(graph, pool)
    for n in chosen:
        _install_layer(graph, n, layers[n.inputs[1]], pool, pool_value, where)


def _install_layer(
    graph: Graph, n: Node, lay: dict[str, np.ndarray], pool: np.ndarray, pool_value: str, where: str
) -> None:
    """Check one layer's fields against its weight and write it as a learned pool layer."""
    s, v = pool.shape
    w = weight_matrix(n, graph).astype(np.float64)
    o, k = w.shape
    g = n_slots(k, v)
    idx = np.asarray(lay.get("idx", np.zeros(0)))
    alpha = np.asarray(lay.get("alpha", np.zeros(0)), dtype=np.float64).reshape(-1)
    err = lay.get("err")
    beta = np.asarray(lay.get("beta", np.zeros(1)), dtype=np.float64).reshape(-1)
    bad = (
        idx.shape != (o, g)
        or idx.dtype.kind not in "iu"
        or (idx.size and (idx.min() < 0 or idx.max() >= s))
        or alpha.size not in (1, o)
        or (err is not None and (err.shape != (o, g, v) or beta.size != 1))
    )
    if bad:
        raise OptionError(
            f"{where}: layer {n.name!r} (weight {n.inputs[1]!r}, W {o}x{k}, {g} vectors of "
            f"{v}) needs idx[{o},{g}] in [0, {s}), alpha[1 or {o}] and optionally "
            f"err[{o},{g},{v}] with beta[1]; the file has idx{list(idx.shape)}, "
            f"alpha{list(alpha.shape)}" + ("" if err is None else f", err{list(err.shape)}")
        )
    idx = idx.astype(np.int32)
    recon = dense_weights(pool, idx, alpha, err, beta)[:, :k]
    gap = float(np.max(np.abs(recon - w))) if w.size else 0.0
    if gap > 1e-5 * max(float(np.max(np.abs(w))), 1e-30):
        raise OptionError(
            f"{where} does not reproduce the weights of layer {n.name!r} (max error {gap:.3g}"
            f", max |w| {np.max(np.abs(w)):.3g}): the file belongs to another model, or a "
            "pass before weight-pool changed the weights (compile fine-tuned models "
            "without fold-bn)"
        )
    comp = {
        "pool_size": s,
        "assign": "learned",
        "scale": "per-channel" if alpha.size > 1 else "per-layer",
        "calibrated": False,
        "learned": True,
    }
    if err is not None:
        keep = float(lay.get("keep", 1.0))
        comp["error_keep"] = keep
        if keep < 1.0:
            if "mask" not in lay or "chunk" not in lay:
                raise OptionError(f"{where}: layer {n.name!r} has keep={keep} but no mask/chunk")
            comp.update(
                error_group=int(lay.get("group", 128)),
                error_chunk=int(lay["chunk"]),
                error_mask=lay["mask"].astype(bool),
            )
    err8, beta1 = (None, None) if err is None else (err.astype(np.int8), beta[:1])
    write_pool_layer(graph, n, w, pool_value, v, (idx, alpha, err8, beta1), **comp)
