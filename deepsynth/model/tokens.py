"""Visual-token arithmetic: how many tokens a page costs each model family, and whether a document fits.

A page image becomes a fixed number of visual tokens that depends only on its size and on the
processor's geometry, so budgets can be computed without loading a model:

- DeepSeek-OCR-2: a square global view (`global_size`, 16 px SAM patches downsampled 4x gives
  (1024 / 64)^2 = 256 queries), one view separator, and, for pages larger than one tile, a grid
  of 2-6 tiles of 768 px at 144 queries each. An A4 page at 150 dpi (1240x1754) gets a 2x3
  grid: 256 + 1 + 6 x 144 = 1121 tokens.
- DeepSeek-OCR v1: per resolution mode, a grid of queries with a newline token closing every
  row, a view separator, and in gundam mode a grid of 640 px crops.

`Ocr2Geometry.of(processor)` reads a loaded processor (the tiny model's or the real one's);
`PUBLISHED_OCR2` is the published checkpoint's, which `TrainConfig` checks budgets against, so
a recipe that fits on paper fits the real model.

    tokens = layout_visual_tokens("ocr2-a4")                      # 1121
    check_token_budget(max_pages=4, page_tokens=1121, prompt="Summarize.", max_length=4096)  # raises
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import get_optimal_tiled_canvas

from deepsynth.data.render import get_layout

MIN_SUMMARY_TOKENS = 32
"""Room a budget must leave for the summary (plus EOS): a sequence that fits only the pages teaches nothing."""


@dataclass(frozen=True)
class Ocr2Geometry:
    """What a DeepSeek-OCR-2 processor does to a page's size."""

    patch_size: int = 16
    downsample_ratio: int = 4
    global_size: int = 1024
    tile_size: int = 768
    min_tiles: int = 2
    max_tiles: int = 6
    crop_to_patches: bool = True

    @classmethod
    def of(cls, processor: Any) -> Ocr2Geometry:
        """The geometry of a loaded `DeepseekOcr2Processor`."""
        ip = processor.image_processor
        return cls(patch_size=processor.patch_size, downsample_ratio=processor.downsample_ratio,
                   global_size=ip.size["height"], tile_size=ip.tile_size, min_tiles=ip.min_patches,
                   max_tiles=ip.max_patches, crop_to_patches=ip.crop_to_patches)

    def visual_tokens(self, width: int, height: int) -> int:
        """Tokens of one page: the processor's `replace_image_token` count for an image of this size."""
        per_side = self.patch_size * self.downsample_ratio
        global_tokens = math.ceil(self.global_size / per_side) ** 2
        tile_tokens = math.ceil(self.tile_size / per_side) ** 2
        num_tiles = 0
        if self.crop_to_patches and max(width, height) > self.tile_size:
            cols, rows = get_optimal_tiled_canvas((height, width), (self.tile_size, self.tile_size),
                                                  self.min_tiles, self.max_tiles)
            num_tiles = cols * rows
        return global_tokens + num_tiles * tile_tokens + 1  # +1: the view separator

    def useful_size(self, width: int, height: int) -> tuple[int, int]:
        """The page size past which the processor only scales the pixels away: the longest side of the
        1024 px global view or of the 768 px tile grid it picks for this shape, whichever is longer."""
        longest = self.global_size
        if self.crop_to_patches and max(width, height) > self.tile_size:
            cols, rows = get_optimal_tiled_canvas((height, width), (self.tile_size, self.tile_size),
                                                  self.min_tiles, self.max_tiles)
            longest = max(longest, self.tile_size * max(cols, rows))
        return shrink_keeping_tokens(width, height, longest, self.visual_tokens)


# transformers' DeepseekOcr2Processor and DeepseekOcr2ImageProcessor defaults, which are the values
# convert_deepseek_ocr2_weights_to_hf.py writes for deepseek-community/DeepSeek-OCR-2.
PUBLISHED_OCR2 = Ocr2Geometry()


@dataclass(frozen=True)
class V1Mode:
    """A DeepSeek-OCR v1 resolution mode."""

    base_size: int
    """Side of the global view."""
    image_size: int
    """Side of a local crop (equal to base_size when not cropping)."""
    crop: bool
    """Whether large pages are cut into image_size crops next to the global view (gundam mode)."""


V1_MODES: dict[str, V1Mode] = {
    "tiny": V1Mode(512, 512, False),
    "small": V1Mode(640, 640, False),
    "base": V1Mode(1024, 1024, False),
    "large": V1Mode(1280, 1280, False),
    "gundam": V1Mode(1024, 640, True),
}
V1_PATCH, V1_DOWNSAMPLE = 16, 4
V1_MIN_CROPS, V1_MAX_CROPS = 2, 9


def v1_mode_for(layout: str) -> str:
    """The v1 resolution mode a layout is rendered for: `v1-<mode>` layouts name it, any other gets gundam."""
    mode = layout.removeprefix("v1-") if layout.startswith("v1-") else "gundam"
    return mode if mode in V1_MODES else "gundam"


def v1_crop_grid(mode: V1Mode, width: int, height: int) -> tuple[int, int]:
    """(columns, rows) of the local crops v1 cuts a page into; (1, 1) means no crops."""
    if not mode.crop or (width <= mode.image_size and height <= mode.image_size):
        return 1, 1
    return get_optimal_tiled_canvas((height, width), (mode.image_size, mode.image_size), V1_MIN_CROPS, V1_MAX_CROPS)


def v1_useful_size(mode: V1Mode, width: int, height: int) -> tuple[int, int]:
    """The page size past which v1 only scales the pixels away: its view, or its crop grid in gundam mode."""
    cols, rows = v1_crop_grid(mode, width, height)
    longest = max(mode.base_size, mode.image_size * max(cols, rows)) if mode.crop else mode.image_size
    return shrink_keeping_tokens(width, height, longest, lambda w, h: v1_visual_tokens(mode, w, h))


def shrink_keeping_tokens(width: int, height: int, longest: int, tokens: Callable[[int, int], int]
                          ) -> tuple[int, int]:
    """(width, height) scaled down so its longest side is `longest`, unless it is no longer already, or the
    rounding of the shorter side would change its `tokens` (a tile grid chosen on the edge of two shapes)."""
    if max(width, height) <= longest:
        return width, height
    scale = longest / max(width, height)
    smaller = (max(1, round(width * scale)), max(1, round(height * scale)))
    return smaller if tokens(*smaller) == tokens(width, height) else (width, height)


def v1_visual_tokens(mode: V1Mode, width: int, height: int) -> int:
    """Tokens of one page in a v1 mode: rows of queries each closed by a newline, then the view separator."""
    if not mode.crop:
        q = math.ceil(mode.image_size / V1_PATCH / V1_DOWNSAMPLE)
        return (q + 1) * q + 1
    q_base = math.ceil(mode.base_size / V1_PATCH / V1_DOWNSAMPLE)
    tokens = (q_base + 1) * q_base + 1
    cols, rows = v1_crop_grid(mode, width, height)
    if cols > 1 or rows > 1:
        q = math.ceil(mode.image_size / V1_PATCH / V1_DOWNSAMPLE)
        tokens += (q * cols + 1) * (q * rows)
    return tokens


def layout_visual_tokens(layout: str, geometry: Ocr2Geometry = PUBLISHED_OCR2) -> int:
    """Tokens of one rendered page of `layout` for the published checkpoint of the layout's family.

    `v1-<mode>` layouts are read by DeepSeek-OCR v1 in that mode; every other layout by OCR-2.
    """
    page = get_layout(layout)
    if layout.startswith("v1-"):
        return v1_visual_tokens(V1_MODES[layout.removeprefix("v1-")], page.width, page.height)
    return geometry.visual_tokens(page.width, page.height)


def prompt_token_bound(prompt: str, num_pages: int) -> int:
    """An upper bound of the prompt's non-visual tokens: BOS, one newline per page and the instruction.

    Byte-level BPE never needs more tokens than bytes, so this holds for any tokenizer of the family.
    """
    return 1 + num_pages + len(prompt.encode("utf-8"))


def check_token_budget(*, max_pages: int, page_tokens: int, prompt: str, max_length: int,
                       min_summary_tokens: int = MIN_SUMMARY_TOKENS) -> None:
    """Raise if `max_pages` pages of `page_tokens` each, the prompt and a minimal summary exceed `max_length`."""
    prompt_tokens = prompt_token_bound(prompt, max_pages)
    needed = max_pages * page_tokens + prompt_tokens + min_summary_tokens + 1
    if needed > max_length:
        # Each page costs its visual tokens plus its newline; BOS, the instruction and the summary are fixed.
        fixed = 1 + len(prompt.encode("utf-8")) + min_summary_tokens + 1
        fitting = (max_length - fixed) // (page_tokens + 1)
        raise ValueError(
            f"max_length={max_length} cannot hold max_pages={max_pages} pages of {page_tokens} visual tokens "
            f"({max_pages * page_tokens}), the prompt (up to {prompt_tokens}) and a summary of at least "
            f"{min_summary_tokens} tokens: {needed} tokens. Raise max_length to {needed} or more, or lower max_pages "
            f"to {max(fitting, 0)}, or use a layout with fewer tokens per page."
        )
