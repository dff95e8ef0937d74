"""Text-safe augmentation of training page images.

Rendered pages are pixel-perfect, while pages at inference time are scans, photos and
re-encoded PDFs. A little rotation, scaling, contrast change, blur and JPEG noise narrows that
gap. Every change keeps the text readable: pages are never flipped or mirrored, rotation stays
within a few degrees, and the page keeps its size (scaled around its center, cropped or padded
with white), so the model's view of the page and its visual token count are unchanged.

Augmentation is for training pages only. This module doesn't know the split: the caller (the
collator or the data pipeline) applies it to the train split and passes validation and test
pages through untouched. All randomness comes from the `random.Random` the caller passes, so
a seed reproduces the same pages.

    config = AugmentConfig(max_rotation_deg=1.0)
    pages = augment_pages(render_pages(text, LAYOUTS["ocr2-page"]), config, seed=step)
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageEnhance, ImageFilter

# Beyond a few degrees the lines of text start to cross the rows of the model's patches, and
# reading accuracy drops faster than robustness improves.
MAX_ROTATION_LIMIT_DEG = 5.0


@dataclass(frozen=True)
class AugmentConfig:
    """How strongly to perturb each training page."""

    enabled: bool = True
    """False returns every page unchanged, e.g. to compare a run without augmentation."""
    max_rotation_deg: float = 1.5
    """Rotate by an angle drawn uniformly from [-max, max] degrees; at most 5."""
    scale_range: tuple[float, float] = (0.95, 1.05)
    """Zoom factor range around the page center; the page is then cropped or padded to its size."""
    blur_prob: float = 0.2
    """Probability of a Gaussian blur."""
    max_blur_radius: float = 0.8
    """Blur radius drawn uniformly from [0, max] pixels when a page is blurred."""
    jpeg_prob: float = 0.3
    """Probability of re-encoding the page as JPEG."""
    jpeg_quality_range: tuple[int, int] = (40, 90)
    """JPEG quality range (1..95) when a page is re-encoded; lower adds more artifacts."""
    contrast_range: tuple[float, float] = (0.8, 1.2)
    """Contrast factor range; 1.0 keeps the page as it is."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_rotation_deg <= MAX_ROTATION_LIMIT_DEG:
            raise ValueError(
                f"AugmentConfig max_rotation_deg must be in [0, {MAX_ROTATION_LIMIT_DEG}] "
                f"(more rotation hurts reading), got {self.max_rotation_deg}."
            )
        for name in ("blur_prob", "jpeg_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig {name} is a probability and must be in [0, 1], got {value}.")
        if self.max_blur_radius < 0:
            raise ValueError(f"AugmentConfig max_blur_radius must be >= 0, got {self.max_blur_radius}.")
        for name in ("scale_range", "contrast_range"):
            low, high = _pair(name, getattr(self, name))
            if not 0 < low <= high:
                raise ValueError(f"AugmentConfig {name} must be (low, high) with 0 < low <= high, got {(low, high)}.")
        low, high = _pair("jpeg_quality_range", self.jpeg_quality_range)
        if not 1 <= low <= high <= 95:
            raise ValueError(
                f"AugmentConfig jpeg_quality_range must be (low, high) with 1 <= low <= high <= 95, got {(low, high)}."
            )


def _pair(name: str, value: tuple) -> tuple:
    # YAML gives lists, so accept any two-item sequence rather than only a tuple.
    if len(value) != 2:
        raise ValueError(f"AugmentConfig {name} must be a (low, high) pair, got {value!r}.")
    return tuple(value)


def augment_page(page: Image.Image, config: AugmentConfig, rng: random.Random) -> Image.Image:
    """Return a perturbed copy of an RGB page with the same size and mode.

    With `config.enabled` False the page itself is returned. The result depends only on the
    page, the config and the state of `rng`, which advances.
    """
    if not config.enabled:
        return page
    angle = rng.uniform(-config.max_rotation_deg, config.max_rotation_deg)
    scale = rng.uniform(*config.scale_range)
    contrast = rng.uniform(*config.contrast_range)
    blur_radius = rng.uniform(0.0, config.max_blur_radius) if rng.random() < config.blur_prob else 0.0
    jpeg_quality = rng.randint(*config.jpeg_quality_range) if rng.random() < config.jpeg_prob else None

    # Rotation and zoom as one affine map resample the glyphs once instead of twice. The map
    # takes output pixels back to input pixels; its determinant is positive, so it never mirrors.
    width, height = page.size
    cx, cy = width / 2, height / 2
    theta = math.radians(angle)
    a, b = math.cos(theta) / scale, math.sin(theta) / scale
    d, e = -b, a
    matrix = (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy)
    out = page.transform(page.size, Image.Transform.AFFINE, matrix, Image.Resampling.BICUBIC, fillcolor="white")

    # Contrast comes after the geometry so the white fill at the borders matches the paper.
    out = ImageEnhance.Contrast(out).enhance(contrast)
    if blur_radius > 0:
        out = out.filter(ImageFilter.GaussianBlur(blur_radius))
    if jpeg_quality is not None:
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=jpeg_quality)
        buffer.seek(0)
        out = Image.open(buffer).convert("RGB")
    return out


def augment_pages(pages: list[Image.Image], config: AugmentConfig, seed: int) -> list[Image.Image]:
    """Augment a document's pages with one `random.Random(seed)`, so the seed reproduces them."""
    rng = random.Random(seed)
    return [augment_page(page, config, rng) for page in pages]
