"""Model families: the few things that differ between DeepSeek-OCR-2 and DeepSeek-OCR v1.

Everything model-specific about a batch lives here, behind one small `ModelFamily` protocol:
how page images and a prompt become token ids plus vision tensors, how per-example vision
tensors are merged into a batch, how many visual tokens a page costs, and which modules are
the vision tower, the projector and the text decoder. The rest of DeepSynth (rendering,
collation, training, serving) talks only to this protocol.

- `Ocr2Family` wraps the native transformers `DeepseekOcr2Processor`
  (`deepseek-community/DeepSeek-OCR-2`): inputs are `pixel_values`, `pixel_values_local`
  and `num_local_patches`.
- `V1Family` builds the inputs of DeepSeek-OCR v1 (`deepseek-ai/DeepSeek-OCR`, our native
  `DeepseekOCRForCausalLM`): `pixel_values` (global views), `pixel_values_local` (crops) and
  `images_spatial_crop`, all tensors.

    model, processor, family = load_model_and_processor(path)   # picks the family
    encoded = family.encode_prompt(pages, "Summarize the document.")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from transformers import DeepseekOcr2ForConditionalGeneration

from deepsynth.model.deepseek_ocr_v1 import DeepseekOCRForCausalLM
from deepsynth.model.original_layout import OCR2_ORIGINAL
from deepsynth.model.tokens import V1_MODES, Ocr2Geometry, v1_crop_grid, v1_useful_size, v1_visual_tokens

IMAGE_TOKEN = "<image>"


@dataclass
class PromptInputs:
    """One example's prompt: token ids (image placeholders expanded) and its vision tensors."""

    input_ids: list[int]
    vision: dict[str, Any] = field(default_factory=dict)
    num_visual_tokens: int = 0


class OriginalLayout(Protocol):
    """A family's original checkpoint layout, the one vLLM serves (`deepsynth export --format original`)."""

    name: str
    """The original checkpoint whose layout this is, e.g. deepseek-ai/DeepSeek-OCR-2."""
    architecture: str
    """Its config.json `architectures` entry, the class vLLM registers."""
    lora_modules: tuple[str, ...]
    """The module names vLLM's LoRA loader adapts."""

    def config(self, config: Any, dtype: str = "bfloat16") -> dict[str, Any]: ...

    def tensors(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]: ...

    def adapter(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def incompatibilities(self, config: Any, processor: Any) -> list[str]: ...


class ModelFamily(Protocol):
    name: str
    tokenizer: Any
    full_precision_modules: tuple[str, ...]
    original_layout: OriginalLayout | None
    """How to write the family's models in the layout vLLM serves; None where the native model already saves it."""
    model_class: type
    """The native transformers model class: `from_pretrained` loads the published checkpoint."""
    image_token_id: int

    def encode_prompt(self, pages: Sequence[Image.Image], prompt: str) -> PromptInputs: ...

    def merge_vision(self, items: Sequence[PromptInputs], input_ids: torch.Tensor) -> dict[str, Any]: ...

    def count_visual_tokens(self, width: int, height: int) -> int: ...

    def useful_size(self, width: int, height: int) -> tuple[int, int]: ...

    def vision_parts(self, model: nn.Module, include_projector: bool) -> dict[str, nn.Module | nn.Parameter]: ...

    def decoder_parts(self, model: nn.Module) -> dict[str, nn.Module]: ...

    def router_parts(self, model: nn.Module) -> list[nn.Module]: ...


def _page_prefix(num_pages: int) -> str:
    # One placeholder line per page, as in the checkpoints' own "<image>\nFree OCR." prompts.
    return f"{IMAGE_TOKEN}\n" * num_pages


def _concat_vision(items: Sequence[PromptInputs], keys: tuple[str, ...]) -> dict[str, Any]:
    """`keys` concatenated over the examples in order, and the crops (`pixel_values_local`) of those that have any."""
    merged = {key: torch.cat([it.vision[key] for it in items]) for key in keys}
    local = [it.vision["pixel_values_local"] for it in items if "pixel_values_local" in it.vision]
    if local:
        merged["pixel_values_local"] = torch.cat(local)
    return merged


class Ocr2Family:
    """DeepSeek-OCR-2 through transformers' native `DeepseekOcr2Processor`."""

    name = "deepseek-ocr-2"
    model_class = DeepseekOcr2ForConditionalGeneration
    # Vision tower, projector and output head stay in full precision when the decoder is quantized.
    full_precision_modules = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
    original_layout = OCR2_ORIGINAL

    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.geometry = Ocr2Geometry.of(processor)
        self.image_token_id = processor.image_token_id

    def encode_prompt(self, pages: Sequence[Image.Image], prompt: str) -> PromptInputs:
        if not pages:
            raise ValueError("A document needs at least one page image.")
        out = self.processor(images=list(pages), text=_page_prefix(len(pages)) + prompt, return_tensors="pt")
        input_ids = out["input_ids"][0].tolist()
        vision = {"pixel_values": out["pixel_values"], "num_local_patches": out["num_local_patches"]}
        if "pixel_values_local" in out:
            vision["pixel_values_local"] = out["pixel_values_local"]
        num_visual = sum(1 for t in input_ids if t == self.processor.image_token_id)
        return PromptInputs(input_ids=input_ids, vision=vision, num_visual_tokens=num_visual)

    def merge_vision(self, items: Sequence[PromptInputs], input_ids: torch.Tensor) -> dict[str, Any]:
        # The model scatters image features into placeholder positions in order, so pages are
        # concatenated example by example, exactly as the input_ids list them.
        return _concat_vision(items, ("pixel_values", "num_local_patches"))

    def count_visual_tokens(self, width: int, height: int) -> int:
        return self.geometry.visual_tokens(width, height)

    def useful_size(self, width: int, height: int) -> tuple[int, int]:
        return self.geometry.useful_size(width, height)

    @staticmethod
    def vision_parts(model: nn.Module, include_projector: bool) -> dict[str, nn.Module | nn.Parameter]:
        core = model.model
        parts: dict[str, nn.Module | nn.Parameter] = {"vision_tower": core.vision_tower}
        if include_projector:
            parts["multi_modal_projector"] = core.multi_modal_projector
            parts["view_separator"] = core.view_separator
        return parts

    @staticmethod
    def decoder_parts(model: nn.Module) -> dict[str, nn.Module]:
        return {"language_model": model.model.language_model, "lm_head": model.lm_head}

    @staticmethod
    def router_parts(model: nn.Module) -> list[nn.Module]:
        """The MoE layers' router gates (the dense first layer has none)."""
        return [layer.mlp.gate for layer in model.model.language_model.layers if hasattr(layer.mlp, "gate")]


_V1_MEAN = 0.5


def _v1_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy((array - _V1_MEAN) / 0.5).permute(2, 0, 1).contiguous()


class V1Family:
    """DeepSeek-OCR v1 (`deepseek-ai/DeepSeek-OCR`): its page views in the published preprocessing."""

    name = "deepseek-ocr-v1"
    model_class = DeepseekOCRForCausalLM
    full_precision_modules = ("model.sam_model", "model.vision_model", "model.projector", "lm_head")
    # The native v1 saves the published names and config.json itself (a reversed conversion mapping), so
    # `--format hf` is the original layout; vLLM-named v1 adapters are not written.
    original_layout = None

    def __init__(self, tokenizer: Any, mode: str = "gundam"):
        if mode not in V1_MODES:
            raise ValueError(f"Unknown DeepSeek-OCR v1 mode {mode!r}; choose one of {sorted(V1_MODES)}.")
        self.tokenizer = tokenizer
        self.mode = V1_MODES[mode]
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {IMAGE_TOKEN!r} token; load the DeepSeek-OCR v1 tokenizer.")

    def count_visual_tokens(self, width: int, height: int) -> int:
        return v1_visual_tokens(self.mode, width, height)

    def useful_size(self, width: int, height: int) -> tuple[int, int]:
        return v1_useful_size(self.mode, width, height)

    def _views(self, page: Image.Image) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
        m = self.mode
        pad = (int(_V1_MEAN * 255),) * 3
        if not m.crop:
            if m.image_size <= 640:
                page = page.resize((m.image_size, m.image_size), Image.Resampling.BICUBIC)
            return _v1_to_tensor(ImageOps.pad(page, (m.image_size, m.image_size), color=pad)), [], (1, 1)
        cols, rows = v1_crop_grid(m, *page.size)
        crops = []
        if cols > 1 or rows > 1:
            resized = page.resize((m.image_size * cols, m.image_size * rows), Image.Resampling.BICUBIC)
            for i in range(cols * rows):
                x, y = (i % cols) * m.image_size, (i // cols) * m.image_size
                crops.append(_v1_to_tensor(resized.crop((x, y, x + m.image_size, y + m.image_size))))
        return _v1_to_tensor(ImageOps.pad(page, (m.base_size, m.base_size), color=pad)), crops, (cols, rows)

    def encode_prompt(self, pages: Sequence[Image.Image], prompt: str) -> PromptInputs:
        # v1's forward reshapes each example's global features into one square grid, so it
        # takes exactly one image per example; multi-page documents need OCR-2.
        if len(pages) != 1:
            raise ValueError(
                f"DeepSeek-OCR v1 reads one page image per example, got {len(pages)}; "
                "use DeepSeek-OCR-2 for multi-page documents, or a layout that fits the text on one page."
            )
        page = pages[0].convert("RGB")
        global_view, crops, grid = self._views(page)
        num_visual = self.count_visual_tokens(*page.size)
        input_ids = (
            [self.tokenizer.bos_token_id]
            + [self.image_token_id] * num_visual
            + self.tokenizer.encode("\n" + prompt, add_special_tokens=False)
        )
        vision = {"pixel_values": global_view.unsqueeze(0),
                  "images_spatial_crop": torch.tensor([grid], dtype=torch.long)}
        if crops:
            vision["pixel_values_local"] = torch.stack(crops)
        return PromptInputs(input_ids=input_ids, vision=vision, num_visual_tokens=num_visual)

    def merge_vision(self, items: Sequence[PromptInputs], input_ids: torch.Tensor) -> dict[str, Any]:
        # The model lays out each example's crops (in order, `images_spatial_crop` says how many)
        # and its global view into that example's <image> positions.
        return _concat_vision(items, ("pixel_values", "images_spatial_crop"))

    @staticmethod
    def vision_parts(model: nn.Module, include_projector: bool) -> dict[str, nn.Module | nn.Parameter]:
        core = model.model
        parts: dict[str, nn.Module | nn.Parameter] = {"sam_model": core.sam_model, "vision_model": core.vision_model}
        if include_projector:
            parts["projector"] = core.projector
            parts["image_newline"] = core.image_newline
            parts["view_seperator"] = core.view_seperator
        return parts

    @staticmethod
    def decoder_parts(model: nn.Module) -> dict[str, nn.Module]:
        return {"language_model": model.model.language_model, "lm_head": model.lm_head}

    @staticmethod
    def router_parts(model: nn.Module) -> list[nn.Module]:
        """The MoE layers' router gates (the dense first layer has none)."""
        return [layer.mlp.gate for layer in model.model.language_model.layers if hasattr(layer.mlp, "gate")]
