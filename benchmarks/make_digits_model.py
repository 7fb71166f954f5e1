"""Train cimc's bundled default model: a small ResNet-style CNN on scikit-learn's digits.

    python benchmarks/make_digits_model.py [--out-dir cimc/data] [--seed 0] [--epochs 40]

The data is sklearn.datasets.load_digits (1797 8x8 grey images, 10 classes, shipped with
scikit-learn, so nothing is downloaded). Pixels are scaled to [0, 1] and upsampled to 16x16;
the split is a fixed, seeded, stratified 60/20/20 train/val/test. The epoch with the best
validation accuracy is exported to ONNX (opset 17, TorchScript exporter, BatchNorm kept) and
checked with onnxruntime. Writes, atomically, into --out-dir:

    digits_cnn.onnx   the model: input "input" (batch, 1, 16, 16) float32 -> "logits" (batch, 10)
    digits_test.npz   the held-out test split: "input" (N, 1, 16, 16) float32, "label" (N,) int64
    digits_calib.npz  64 training images, "input", for calibration
    digits_cnn.json   seed, epochs, split sizes, best epoch, accuracies, parameter count, versions

Training is deterministic: the same seed, thread count and torch build give a byte-identical
ONNX file. --threads (default 1) is part of that recipe, because the float reductions inside
CPU convolutions are split differently for different thread counts.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from cimc.atomic import atomic_path
from cimc.models import BasicBlock, export_module, projection

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 16  # model input is SIZE x SIZE
NUM_CLASSES = 10


# --------------------------------------------------------------------------- data


def load_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The raw digits split 60/20/20, stratified, with `seed` as random_state.

    Returns {"train"|"val"|"test": (images, labels)}: images are the raw (n, 8, 8) float64
    pixel values 0..16 as load_digits gives them, labels int64. Pure numpy/scikit-learn, so
    the tests can recompute the split and compare raw images.
    """
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        images, labels, test_size=0.4, stratify=labels, random_state=seed
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def to_input(images: np.ndarray) -> np.ndarray:
    """Raw (n, 8, 8) digits -> model input (n, 1, 16, 16) float32 in [0, 1].

    Bilinear rather than nearest: nearest would make every activation map a grid of identical
    2x2 blocks with only 17 distinct input levels, an unrealistically easy case for the
    compiler's quantisation and for the stride-2 convolutions (which would then just subsample
    the blocks). Bilinear gives smooth strokes with many distinct values and correlated
    neighbours, closer to what a real image net sees. align_corners=False keeps [0, 1] (it only
    interpolates between pixels) and is what torch/ONNX Resize default to.
    """
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x.contiguous().numpy()


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by dx, dy in {-1, 0, 1} pixels (zero fill), drawn from `gen`."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offsets[i, 0]), int(offsets[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


# --------------------------------------------------------------------------- model


class DigitsCNN(nn.Module):
    """16x16x1 -> stem conv3x3(16) -> block(32, /2) -> block(64, /2) -> GAP -> Linear(10)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = BasicBlock(16, 32, 2, projection(16, 32, 2))  # 16x16 -> 8x8
        self.layer2 = BasicBlock(32, 64, 2, projection(32, 64, 2))  # 8x8 -> 4x4
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- training


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = model(x).argmax(1)
    return int((pred == y).sum()) / len(y)


def train(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    seed: int,
    epochs: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
) -> tuple[nn.Module, int, float]:
    """Adam + per-step cosine decay; returns (model at best val epoch, that epoch, val acc)."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    gen = torch.Generator().manual_seed(seed)  # shuffling and augmentation
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(x_train) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)

    best_acc, best_epoch, best_state = -1.0, 0, None
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for start in range(0, len(perm), batch_size):
            idx = perm[start : start + batch_size]
            xb = random_shift(x_train[idx], gen)
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        val_acc = accuracy(model, x_val, y_val)
        if val_acc > best_acc:  # strict: the earliest epoch wins ties
            best_acc, best_epoch = val_acc, epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval(), best_epoch, best_acc


# --------------------------------------------------------------------------- output


def _write_atomic(out_dir: Path, final_name: str, write) -> Path:
    with atomic_path(out_dir / final_name) as tmp:
        write(tmp)
    return out_dir / final_name


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    return int((logits.argmax(1) == y).sum()) / len(y)


CALIBRATION_SAMPLES = 64


def write_calibration(out_dir: Path, train_images: np.ndarray) -> Path:
    """The first CALIBRATION_SAMPLES training images: what `cimc demo` calibrates activation
    ranges and output-aware assignment on (never the test images)."""
    x = to_input(train_images[:CALIBRATION_SAMPLES])
    return _write_atomic(out_dir, "digits_calib.npz", lambda p: np.savez(p, input=x))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out-dir", type=Path, default=REPO_ROOT / "cimc" / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (part of determinism)"
    )
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    splits = load_splits(args.seed)
    data = {k: (torch.from_numpy(to_input(x)), torch.from_numpy(y)) for k, (x, y) in splits.items()}
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data["train"], data["val"], data["test"]

    t0 = time.perf_counter()
    model, best_epoch, val_acc = train(x_tr, y_tr, x_va, y_va, seed=args.seed, epochs=args.epochs)
    train_s = time.perf_counter() - t0
    test_acc = accuracy(model, x_te, y_te)

    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = _write_atomic(
        out_dir, "digits_cnn.onnx", lambda p: export_module(model, x_te[:1], p, dynamic_batch=True)
    )
    x_test_np, y_test_np = x_te.numpy(), y_te.numpy()
    npz_path = _write_atomic(
        out_dir, "digits_test.npz", lambda p: np.savez(p, input=x_test_np, label=y_test_np)
    )
    calib_path = write_calibration(out_dir, splits["train"][0])
    onnx_acc = onnx_accuracy(onnx_path, x_test_np, y_test_np)

    info = {
        "seed": args.seed,
        "epochs": args.epochs,
        "threads": args.threads,
        "split": {k: len(v[1]) for k, v in splits.items()},
        "input_shape": [1, SIZE, SIZE],
        "best_epoch": best_epoch,
        "val_accuracy": val_acc,
        "test_accuracy_torch": test_acc,
        "test_accuracy_onnx": onnx_acc,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
    }
    json_path = _write_atomic(
        out_dir,
        "digits_cnn.json",
        lambda p: p.write_text(json.dumps(info, indent=2) + "\n"),
    )

    print(
        f"digits CNN: {info['parameters']:,} params, split {info['split']}, "
        f"trained {args.epochs} epochs in {train_s:.1f}s ({args.threads} thread(s))"
    )
    print(
        f"best epoch {best_epoch}: val {val_acc:.4f}  test torch {test_acc:.4f}  "
        f"test onnxruntime {onnx_acc:.4f}"
    )
    for p in (onnx_path, npz_path, calib_path, json_path):
        print(f"  wrote {p} ({p.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
