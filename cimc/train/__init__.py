"""cimc.train: weight-pool-aware fine-tuning and the int8/int4 baselines (needs torch: the
``train`` extra).

Workflow::

    from cimc.train import data, finetune, export
    splits = data.load("chars")
    cfg = finetune.TrainConfig(epochs=20, seed=0)
    fp32 = finetune.pretrain(splits, cfg)
    tuned = finetune.finetune(fp32, get_scheme("cimpool-keep0.5"), splits,
                              finetune.finetune_config(cfg, 10))
    out = export.export_model(tuned, "model.onnx", torch.from_numpy(splits.x_train[:1]))
    # out.pipeline == "zpack{vector=128},weight-pool{...,assignment=model.npz},quantize-act{bits=8}"

or ``cimc train --data chars --scheme cimpool-keep0.5 --out runs/chars``.

Compressed layers (:mod:`cimc.train.layers`) compute their weight with the functions the
compiler's passes call, from :mod:`cimc.compress` (``build_pool``, ``assign``,
``pool_residual``, ``full_error``, ``pruned_error``, ``quantized_weights``) and pass gradients
straight through to latent float weights. The
pool is built once from the pre-trained weights and frozen; indices, alpha, error signs, beta
and the structured mask are recomputed at every step, by the same rules as weight-pool
(``assign=non-repeating``, per-layer alpha), error-term and error-prune. The export writes the
ONNX model with the compressed weights and the learned assignment (:mod:`cimc.train.export`);
``weight-pool{assignment=FILE}`` installs it as it is and marks the layers ``learned``, so
error-term and error-prune leave them alone.

BatchNorm: the compiler's default pipeline folds BN into the conv weights (fold-bn) before
compressing. A fine-tuned CIMPool layer compresses the *conv* weight, with BN after it (BN's
per-channel scale then acts like a free per-channel scale on the vector unit), and folding
would change the weights so they no longer lie on the pool. So fine-tuned models are compiled
WITHOUT fold-bn -- ``zpack,weight-pool{assignment=...},quantize-act`` -- and BN runs as a
vector-unit op after the compressed layer. weight-pool checks that the file reproduces the
weights and says so if a pass before it (fold-bn) changed them. The int baselines are
compiled the same way (``zpack,quantize-weights{bits=N},quantize-act``) for symmetry.

Activations: every CiM layer input is quantised per tensor to 8 bits as quantize-act does
(unsigned after ReLU, symmetric otherwise, scale = max|x| / qmax over the calibration samples,
round half to even). While training the range is a moving average; before each validation
and before export it is calibrated on the first ``calib`` training images with compressed
weights and float activations -- what quantize-act sees when given the same images.
"""

from typing import Any

_LAZY = ("SCHEMES", "ActQuant", "CimLayer", "Scheme", "calibrate", "compress_model", "get_scheme")


def __getattr__(name: str) -> Any:
    # torch is imported on first use, so ``cimc.cli.train`` (argparse wiring) loads without it
    if name in _LAZY:
        from . import layers

        return getattr(layers, name)
    raise AttributeError(f"module 'cimc.train' has no attribute {name!r}")


__all__ = list(_LAZY)
