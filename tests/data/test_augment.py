import random

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from deepsynth.data.augment import AugmentConfig, augment_page, augment_pages
from deepsynth.data.render import LAYOUTS, render_pages

# The strongest perturbation the config allows, so every branch runs.
STRONGEST = AugmentConfig(
    max_rotation_deg=5.0,
    scale_range=(0.9, 1.1),
    blur_prob=1.0,
    max_blur_radius=1.5,
    jpeg_prob=1.0,
    jpeg_quality_range=(5, 20),
    contrast_range=(0.6, 1.4),
)


@pytest.fixture(scope="module")
def page() -> Image.Image:
    # Repeated full-width words look almost the same mirrored once blurred, so short
    # left-aligned heading lines give the page a left/right asymmetry the mirror test can see.
    text = "Quarterly report.\n" * 8 + "some text " * 50
    return render_pages(text, LAYOUTS["ocr2-page"])[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def coarse_correlation(a: Image.Image, b: Image.Image) -> float:
    """Pixel correlation at 1/8 scale, where a few pixels of shift from rotation or zoom don't matter."""

    def coarse(image: Image.Image) -> np.ndarray:
        small = image.convert("L").filter(ImageFilter.GaussianBlur(4)).reduce(8)
        return np.asarray(small, dtype=np.float64).ravel()

    return float(np.corrcoef(coarse(a), coarse(b))[0, 1])


@pytest.mark.parametrize("config", [AugmentConfig(), STRONGEST], ids=["default", "strongest"])
@pytest.mark.parametrize("size", [(768, 768), (300, 200)])
def test_size_and_mode_are_kept(page, config, size):
    source = page.resize(size)
    for out in augment_pages([source, source], config, seed=7):
        assert out.size == size
        assert out.mode == "RGB"


@pytest.mark.parametrize("config", [AugmentConfig(), STRONGEST], ids=["default", "strongest"])
def test_same_seed_same_pixels_and_different_seeds_differ(page, config):
    first = augment_pages([page, page], config, seed=3)
    again = augment_pages([page, page], config, seed=3)
    other = augment_pages([page, page], config, seed=4)

    for a, b in zip(first, again):
        assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(first[0]), pixels(other[0]))
    # One rng across a document: its pages are perturbed differently.
    assert not np.array_equal(pixels(first[0]), pixels(first[1]))
    assert not np.array_equal(pixels(first[0]), pixels(page))


def test_result_depends_only_on_the_rng_state(page):
    rng_a, rng_b = random.Random(11), random.Random(11)
    assert np.array_equal(pixels(augment_page(page, STRONGEST, rng_a)), pixels(augment_page(page, STRONGEST, rng_b)))
    assert rng_a.getstate() == rng_b.getstate()


def test_disabled_keeps_every_pixel(page):
    config = AugmentConfig(enabled=False)
    (out,) = augment_pages([page], config, seed=0)
    assert np.array_equal(pixels(out), pixels(page))


@pytest.mark.parametrize("config", [AugmentConfig(), STRONGEST], ids=["default", "strongest"])
def test_pages_are_never_mirrored_or_flipped(page, config):
    mirrored, flipped = ImageOps.mirror(page), ImageOps.flip(page)
    for seed in range(6):
        (out,) = augment_pages([page], config, seed=seed)
        same = coarse_correlation(out, page)
        assert same > 0.6
        assert same > coarse_correlation(out, mirrored) + 0.15
        assert same > coarse_correlation(out, flipped) + 0.15


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"max_rotation_deg": 6.0}, "max_rotation_deg"),
        ({"max_rotation_deg": -1.0}, "max_rotation_deg"),
        ({"scale_range": (1.05, 0.95)}, "scale_range"),
        ({"scale_range": (0.0, 1.0)}, "scale_range"),
        ({"scale_range": (1.0,)}, "scale_range"),
        ({"blur_prob": 1.5}, "blur_prob"),
        ({"jpeg_prob": -0.1}, "jpeg_prob"),
        ({"max_blur_radius": -0.5}, "max_blur_radius"),
        ({"jpeg_quality_range": (90, 40)}, "jpeg_quality_range"),
        ({"jpeg_quality_range": (0, 50)}, "jpeg_quality_range"),
        ({"jpeg_quality_range": (50, 100)}, "jpeg_quality_range"),
        ({"contrast_range": (1.2, 0.8)}, "contrast_range"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"AugmentConfig {field}"):
        AugmentConfig(**overrides)


def test_config_accepts_yaml_lists():
    config = AugmentConfig(scale_range=[0.9, 1.1], jpeg_quality_range=[30, 60])
    (out,) = augment_pages([Image.new("RGB", (64, 48), "white")], config, seed=0)
    assert out.size == (64, 48)
