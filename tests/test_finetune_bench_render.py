"""The text images ddddocr's fine-tuning benchmark renders as extra unlabelled data
(benchmarks/text_images.py): seeded, shaped as ddddocr reads them, varied, in faces the kit
does not use; and the crops benchmarks/finetune.py cuts of them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
text_images = pytest.importorskip("text_images")

pytestmark = pytest.mark.skipif(
    not text_images.FONTS.is_dir(), reason="no DejaVu fonts on this machine"
)
# The faces the devkit's ddddocr images are drawn in (../shared/devkit/build_devkit.py)
KIT_FACES = {
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSansMono",
    "DejaVuSansCondensed-Bold",
}


def test_same_seed_same_images_other_seed_other_images():
    a, b = text_images.text_images(6, seed=3), text_images.text_images(6, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = text_images.text_images(6, seed=4)
    assert not any(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, c))


def test_images_are_grey_height_64_and_vary():
    images = text_images.text_images(40, seed=0)
    for im in images:
        assert im.dtype == np.uint8 and im.ndim == 2
        assert im.shape[0] == text_images.HEIGHT and im.shape[1] >= text_images.WIDTH
        # ink on paper: a contrast of at least 40 grey levels, and some dark pixels
        assert int(np.percentile(im, 99)) - int(im.min()) >= 40
    widths = {im.shape[1] for im in images}
    assert len(widths) >= 20  # 3-8 characters in 26-48 px fonts, varied spacing


def test_strings_are_letters_and_digits_and_differ():
    rng = np.random.default_rng(0)
    texts = [text_images.random_text(rng) for _ in range(200)]
    assert all(3 <= len(t) <= 8 and set(t) <= set(text_images.CHARS) for t in texts)
    assert len(set(texts)) == len(texts)
    assert {len(t) for t in texts} == set(range(3, 9))


def test_faces_exist_and_are_not_the_kits():
    assert not KIT_FACES & set(text_images.FACES)
    assert all((text_images.FONTS / f"{f}.ttf").is_file() for f in text_images.FACES)


def test_crops_fed_as_the_kit_feeds_ddddocr():
    finetune = pytest.importorskip("finetune")
    crops = finetune.rendered_crops(8, seed=1)
    assert crops.dtype == np.float32 and crops.shape[1:] == (1, 1, 64, finetune.OCR_WIDTH)
    assert len(crops) >= 8 and crops.min() >= 0.0 and crops.max() <= 1.0
    again = finetune.rendered_crops(8, seed=1)
    assert np.array_equal(crops, again)
