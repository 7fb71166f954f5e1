"""Unlabelled text images rendered on this machine, more distillation data for ddddocr.

ddddocr's fine-tuning needs many glyph contexts, and the devkit holds only 240 images (160 of
them for distillation). These are other text images, not kit images: random strings of the 62
ASCII letters and digits (each in ddddocr's charset), 3-8 characters, drawn with Pillow in
DejaVu faces the kit's images do not use (it draws Sans, Sans-Bold, Serif, Serif-Bold,
SansMono and SansCondensed-Bold), grey, at the height of 64 px ddddocr reads, with varied
sizes, spacing, contrast, noise lines and dots and a slight rotation. No labels are kept:
distillation needs only the images. Seeded: the same seed gives the same images.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = Path("/usr/share/fonts/truetype/dejavu")
FACES = (
    "DejaVuSans-Oblique",
    "DejaVuSans-BoldOblique",
    "DejaVuSans-ExtraLight",
    "DejaVuSansCondensed",
    "DejaVuSansCondensed-Oblique",
    "DejaVuSansCondensed-BoldOblique",
    "DejaVuSansMono-Bold",
    "DejaVuSansMono-Oblique",
    "DejaVuSansMono-BoldOblique",
    "DejaVuSerif-Italic",
    "DejaVuSerif-BoldItalic",
    "DejaVuSerifCondensed",
    "DejaVuSerifCondensed-Bold",
    "DejaVuSerifCondensed-Italic",
    "DejaVuSerifCondensed-BoldItalic",
)
CHARS = string.ascii_letters + string.digits
HEIGHT = 64  # ddddocr reads images resized to this height
WIDTH = 128  # the narrowest image: ddddocr's distillation crops are 128 px wide


def text_image(text: str, rng: np.random.Generator) -> np.ndarray:
    """``text`` drawn glyph by glyph (each with its own baseline and gap) on a grey
    background with noise, rotated slightly: uint8 [HEIGHT, width >= WIDTH]."""
    face = FONTS / f"{FACES[rng.integers(len(FACES))]}.ttf"
    font = ImageFont.truetype(str(face), int(rng.integers(26, 49)))
    paper, ink = int(rng.integers(150, 256)), int(rng.integers(0, 110))
    gap = int(rng.integers(-3, 9))  # the string's spacing; each glyph varies it by 2 px
    margin = int(rng.integers(4, 21))
    width = margin * 2 + sum(int(font.getlength(c)) + gap + 2 for c in text)
    im = Image.new("L", (max(width, WIDTH), HEIGHT), paper)
    draw = ImageDraw.Draw(im)
    top = (HEIGHT - font.size) // 2 - 4
    x = margin
    for c in text:
        draw.text((x, top + int(rng.integers(-5, 6))), c, font=font, fill=ink)
        x += int(font.getlength(c)) + gap + int(rng.integers(-2, 3))
    for _ in range(int(rng.integers(0, 6))):
        ends = [(int(rng.integers(0, im.width)), int(rng.integers(0, HEIGHT))) for _ in "ab"]
        draw.line(ends, fill=int(rng.integers(40, 220)), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(0, 400))):
        dot = (int(rng.integers(0, im.width)), int(rng.integers(0, HEIGHT)))
        draw.point(dot, fill=int(rng.integers(0, 256)))
    im = im.rotate(float(rng.uniform(-4, 4)), resample=Image.BICUBIC, fillcolor=paper)
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    return np.asarray(im, dtype=np.uint8)


def random_text(rng: np.random.Generator) -> str:
    """3-8 characters of CHARS, uniformly."""
    return "".join(rng.choice(list(CHARS), int(rng.integers(3, 9))))


def text_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` rendered text images (uint8 [HEIGHT, width >= WIDTH], widths vary), seeded."""
    rng = np.random.default_rng(seed)
    return [text_image(random_text(rng), rng) for _ in range(n)]
