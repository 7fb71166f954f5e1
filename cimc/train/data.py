"""Real data, offline: scikit-learn's digits and procedurally rendered characters.

Both come as :class:`Splits` of float32 images ``(n, 1, 32, 32)`` in [0, 1] with int64 labels,
split into fixed train / validation / test sets that do not depend on the training seed.

``digits``: ``sklearn.datasets.load_digits`` (1797 8x8 images, 10 classes, shipped with
scikit-learn), pixels / 16, upsampled bilinearly (align_corners=False) to 32x32, stratified
60/20/20 split with random_state 0 -- the split of ``benchmarks/make_digits_model.py``.

``chars``: the 36 characters 0-9 and A-Z, drawn from a stroke font defined below (polylines
and elliptic arcs in a unit box) and rendered with NumPy as anti-aliased distance fields. No
font file is read. Every sample draws its own "font" (stroke width, slant, aspect ratio,
jittered control points), affine pose (rotation, scale, translation), intensity, blur-like
softness, a distractor stroke now and then, and Gaussian pixel noise. Confusable pairs (0/O,
1/I, 2/Z, 5/S, 8/B, D/O, U/V) keep it from being trivial. Train, validation and test images come
from separate seeded streams, so the splits are fixed and disjoint by construction.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

SIZE = 32
CHAR_CLASSES = tuple(string.digits + string.ascii_uppercase)


@dataclass(frozen=True)
class Splits:
    name: str
    classes: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def subset(self, train: int, val: int, test: int) -> Splits:
        """The first n of each split (the order is already random)."""
        return Splits(
            self.name,
            self.classes,
            self.x_train[:train],
            self.y_train[:train],
            self.x_val[:val],
            self.y_val[:val],
            self.x_test[:test],
            self.y_test[:test],
        )


# ---- digits ----
def _bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """(n, h, w) -> (n, size, size), bilinear with half-pixel centres (align_corners=False)."""
    n, h, w = images.shape

    def axis(src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.clip((np.arange(size) + 0.5) * src / size - 0.5, 0, src - 1)
        i0 = np.floor(c).astype(int)
        i1 = np.minimum(i0 + 1, src - 1)
        return i0, i1, c - i0

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    top = images[:, y0][:, :, x0] * (1 - fx) + images[:, y0][:, :, x1] * fx
    bot = images[:, y1][:, :, x0] * (1 - fx) + images[:, y1][:, :, x1] * fx
    return top * (1 - fy)[:, None] + bot * fy[:, None]


def load_digits_splits(size: int = SIZE, split_seed: int = 0) -> Splits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images, labels = d.images / 16.0, d.target.astype(np.int64)
    x_tr, x_rest, y_tr, y_rest = train_test_split(
        images, labels, test_size=0.4, stratify=labels, random_state=split_seed
    )
    x_va, x_te, y_va, y_te = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=split_seed
    )

    def prep(x: np.ndarray) -> np.ndarray:
        return _bilinear(x, size)[:, None].astype(np.float32)

    return Splits(
        "digits", tuple(map(str, range(10))), prep(x_tr), y_tr, prep(x_va), y_va, prep(x_te), y_te
    )


# ---- procedural characters ----
# A glyph is a list of strokes in a unit box (x right, y down). A stroke is a polyline
# [(x, y), ...] or an elliptic arc ("arc", cx, cy, rx, ry, deg0, deg1) (angles clockwise on
# screen from +x, so 90 is the bottom).
def _arc(cx, cy, rx, ry, a0, a1):
    return ("arc", cx, cy, rx, ry, a0, a1)


GLYPHS: dict[str, list] = {
    "0": [_arc(0.5, 0.5, 0.28, 0.45, 0, 360), [(0.66, 0.2), (0.34, 0.8)]],
    "1": [[(0.3, 0.22), (0.52, 0.05), (0.52, 0.95)], [(0.3, 0.95), (0.74, 0.95)]],
    "2": [_arc(0.5, 0.3, 0.3, 0.25, 190, 380), [(0.76, 0.43), (0.2, 0.95), (0.82, 0.95)]],
    "3": [_arc(0.5, 0.28, 0.28, 0.23, 200, 450), _arc(0.5, 0.72, 0.3, 0.23, 270, 520)],
    "4": [[(0.66, 0.95), (0.66, 0.05), (0.15, 0.68), (0.86, 0.68)]],
    "5": [[(0.78, 0.05), (0.28, 0.05), (0.25, 0.46)], _arc(0.48, 0.65, 0.3, 0.3, -140, 140)],
    "6": [
        _arc(0.5, 0.68, 0.28, 0.27, 0, 360),
        [(0.72, 0.08), (0.45, 0.14), (0.28, 0.38), (0.22, 0.68)],
    ],
    "7": [[(0.18, 0.05), (0.82, 0.05), (0.42, 0.95)]],
    "8": [_arc(0.5, 0.27, 0.24, 0.22, 0, 360), _arc(0.5, 0.72, 0.3, 0.24, 0, 360)],
    "9": [
        _arc(0.5, 0.32, 0.28, 0.27, 0, 360),
        [(0.78, 0.32), (0.74, 0.65), (0.6, 0.88), (0.3, 0.95)],
    ],
    "A": [[(0.12, 0.95), (0.5, 0.05), (0.88, 0.95)], [(0.27, 0.6), (0.73, 0.6)]],
    "B": [
        [(0.62, 0.95), (0.2, 0.95), (0.2, 0.05), (0.58, 0.05)],
        _arc(0.58, 0.27, 0.2, 0.22, 270, 450),
        [(0.58, 0.49), (0.2, 0.49)],
        _arc(0.62, 0.72, 0.22, 0.23, 270, 450),
    ],
    "C": [_arc(0.55, 0.5, 0.37, 0.45, 45, 315)],
    "D": [
        [(0.45, 0.05), (0.2, 0.05), (0.2, 0.95), (0.45, 0.95)],
        _arc(0.45, 0.5, 0.37, 0.45, 270, 450),
    ],
    "E": [[(0.8, 0.05), (0.2, 0.05), (0.2, 0.95), (0.8, 0.95)], [(0.2, 0.5), (0.65, 0.5)]],
    "F": [[(0.8, 0.05), (0.2, 0.05), (0.2, 0.95)], [(0.2, 0.5), (0.65, 0.5)]],
    "G": [_arc(0.52, 0.5, 0.35, 0.45, 35, 315), [(0.55, 0.55), (0.86, 0.55), (0.86, 0.82)]],
    "H": [[(0.2, 0.05), (0.2, 0.95)], [(0.8, 0.05), (0.8, 0.95)], [(0.2, 0.5), (0.8, 0.5)]],
    "I": [[(0.5, 0.05), (0.5, 0.95)], [(0.3, 0.05), (0.7, 0.05)], [(0.3, 0.95), (0.7, 0.95)]],
    "J": [
        [(0.35, 0.05), (0.8, 0.05)],
        [(0.65, 0.05), (0.65, 0.7)],
        _arc(0.45, 0.7, 0.2, 0.25, 0, 160),
    ],
    "K": [[(0.2, 0.05), (0.2, 0.95)], [(0.8, 0.05), (0.2, 0.58)], [(0.38, 0.45), (0.82, 0.95)]],
    "L": [[(0.2, 0.05), (0.2, 0.95), (0.8, 0.95)]],
    "M": [[(0.12, 0.95), (0.15, 0.05), (0.5, 0.6), (0.85, 0.05), (0.88, 0.95)]],
    "N": [[(0.2, 0.95), (0.2, 0.05), (0.8, 0.95), (0.8, 0.05)]],
    "O": [_arc(0.5, 0.5, 0.37, 0.45, 0, 360)],
    "P": [
        [(0.2, 0.95), (0.2, 0.05), (0.55, 0.05)],
        _arc(0.55, 0.28, 0.25, 0.23, 270, 450),
        [(0.55, 0.51), (0.2, 0.51)],
    ],
    "Q": [_arc(0.5, 0.48, 0.36, 0.43, 0, 360), [(0.55, 0.7), (0.85, 0.98)]],
    "R": [
        [(0.2, 0.95), (0.2, 0.05), (0.55, 0.05)],
        _arc(0.55, 0.28, 0.25, 0.23, 270, 450),
        [(0.55, 0.51), (0.2, 0.51)],
        [(0.45, 0.51), (0.82, 0.95)],
    ],
    "S": [_arc(0.5, 0.28, 0.28, 0.23, 330, 90), _arc(0.5, 0.73, 0.3, 0.22, -90, 150)],
    "T": [[(0.1, 0.05), (0.9, 0.05)], [(0.5, 0.05), (0.5, 0.95)]],
    "U": [
        [(0.2, 0.05), (0.2, 0.65)],
        _arc(0.5, 0.65, 0.3, 0.3, 180, 0),
        [(0.8, 0.65), (0.8, 0.05)],
    ],
    "V": [[(0.12, 0.05), (0.5, 0.95), (0.88, 0.05)]],
    "W": [[(0.08, 0.05), (0.28, 0.95), (0.5, 0.35), (0.72, 0.95), (0.92, 0.05)]],
    "X": [[(0.15, 0.05), (0.85, 0.95)], [(0.85, 0.05), (0.15, 0.95)]],
    "Y": [[(0.12, 0.05), (0.5, 0.5), (0.88, 0.05)], [(0.5, 0.5), (0.5, 0.95)]],
    "Z": [[(0.15, 0.05), (0.85, 0.05), (0.15, 0.95), (0.85, 0.95)]],
}


def _stroke_points(stroke, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """A stroke as a polyline [n, 2]; arcs are sampled every ~20 degrees. Control points
    (polyline vertices, arc centre and radii) move by N(0, jitter): the per-sample "font"."""
    if stroke[0] == "arc":
        _, cx, cy, rx, ry, a0, a1 = stroke
        cx, cy = np.array([cx, cy]) + rng.normal(0, jitter, 2)
        rx, ry = np.array([rx, ry]) * (1 + rng.normal(0, jitter, 2))
        n = max(3, int(abs(a1 - a0) / 20) + 1)
        t = np.deg2rad(np.linspace(a0, a1, n))
        return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)
    pts = np.asarray(stroke, dtype=np.float64)
    return pts + rng.normal(0, jitter, pts.shape)


_PIXELS = np.stack(np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5, indexing="xy"), -1)
_PIXELS = _PIXELS.reshape(-1, 2)


def _sample(ch: str, rng: np.random.Generator, clean: bool) -> tuple:
    """Segments a[S, 2], b[S, 2] in pixels, stroke width, ink and the noise image of one
    sample (the random draws in a fixed order, so a seed fixes the image)."""
    jitter = 0.0 if clean else 0.03
    polys = [_stroke_points(s, rng, jitter) for s in GLYPHS[ch]]
    if clean:
        width, slant, aspect, angle, scale, shift, ink, noise = 2.2, 0, 0.8, 0, 0.78, (0, 0), 1, 0
    else:
        width = rng.uniform(1.3, 3.3)
        slant = rng.uniform(-0.3, 0.3)
        aspect = rng.uniform(0.6, 1.0)
        angle = np.deg2rad(rng.uniform(-12, 12))
        scale = rng.uniform(0.62, 0.88)
        shift = rng.uniform(-2.5, 2.5, 2)
        ink = rng.uniform(0.55, 1.0)
        noise = rng.uniform(0.0, 0.18)
    if not clean and rng.random() < 0.3:  # a distractor stroke
        polys.append(rng.uniform(-0.1, 1.1, (2, 2)))
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, -s], [s, c]]) @ np.array([[aspect, slant], [0, 1.0]]) * (scale * SIZE)
    centre = np.array([SIZE / 2, SIZE / 2]) + np.asarray(shift)
    pts = [(poly - 0.5) @ m.T + centre for poly in polys]
    a = np.concatenate([q[:-1] for q in pts])
    b = np.concatenate([q[1:] for q in pts])
    noise_img = rng.normal(0, noise, SIZE * SIZE) if noise else np.zeros(SIZE * SIZE)
    return a, b, width, ink, noise_img


def _draw(samples: list[tuple]) -> np.ndarray:
    """Render samples: distance of every pixel to every segment (padded with far segments)."""
    n_seg = max(len(smp[0]) for smp in samples)
    far = np.full((len(samples), n_seg, 2), -1e3)
    a, b = far.copy(), far.copy()
    for i, smp in enumerate(samples):
        a[i, : len(smp[0])], b[i, : len(smp[1])] = smp[0], smp[1]
    ab = b - a  # n, S, 2
    ap = _PIXELS[None, :, None, :] - a[:, None]  # n, P, S, 2
    den = np.maximum((ab * ab).sum(-1), 1e-12)[:, None]
    t = np.clip((ap * ab[:, None]).sum(-1) / den, 0, 1)
    d = ap - t[..., None] * ab[:, None]
    dist = np.sqrt((d * d).sum(-1).min(axis=2))  # n, P
    width = np.array([smp[2] for smp in samples])[:, None]
    ink = np.array([smp[3] for smp in samples])[:, None]
    img = np.clip(width / 2 + 0.5 - dist, 0.0, 1.0) * ink
    img = img + np.stack([smp[4] for smp in samples])
    return np.clip(img, 0.0, 1.0).reshape(-1, SIZE, SIZE).astype(np.float32)


def render_char(ch: str, rng: np.random.Generator, clean: bool = False) -> np.ndarray:
    """One SIZE x SIZE float32 image of ``ch`` in [0, 1] with a random font, pose and noise
    (``clean``: the plain glyph, centred, for looking at the font)."""
    return _draw([_sample(ch, rng, clean)])[0]


def _render_split(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CHAR_CLASSES)), per_class)
    labels = labels[rng.permutation(len(labels))]
    samples = [_sample(CHAR_CLASSES[y], rng, False) for y in labels]
    images = np.stack([_draw([smp])[0] for smp in samples])  # one at a time: cache-friendly
    return images[:, None], labels.astype(np.int64)


def make_chars(train: int = 150, val: int = 40, test: int = 60, seed: int = 0) -> Splits:
    """Per-class counts for each split; each split has its own seeded stream (seed, split)."""
    parts = [
        _render_split(n, int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        for i, n in enumerate((train, val, test))
    ]
    (xt, yt), (xv, yv), (xs, ys) = parts
    return Splits("chars", CHAR_CLASSES, xt, yt, xv, yv, xs, ys)


DATASETS = ("digits", "chars")


def load(name: str, **kwargs) -> Splits:
    if name == "digits":
        return load_digits_splits(**kwargs)
    if name == "chars":
        return make_chars(**kwargs)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
