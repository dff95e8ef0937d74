"""DeepSeek-OCR v1 (`deepseek-ai/DeepSeek-OCR`) as a native transformers 5.23 model, no remote code.

v1 is "DeepEncoder" (SAM-ViT-B, whose downsampled feature map replaces the patch embedding of a
CLIP-L/14 vision transformer), a linear projector, two learned embeddings (`image_newline`,
`view_seperator`) and a DeepSeek-V2 MoE decoder without MLA. Most of it exists in transformers:

- SAM: `DeepseekOcr2SamVisionEncoder` (OCR-2 uses the same SAM-ViT-B with its two stride-2 convs);
- the decoder: `DeepseekOcr2TextModel` (OCR-2's decoder is the same DeepSeek-V2 MoE: greedy top-k
  on softmax scores, unnormalised weights, shared experts, multi-head attention with RoPE);
- CLIP's transformer: `CLIPEncoder` (pre-LayerNorm blocks, quick-GELU MLP, bidirectional attention).

Our code is only what v1 does differently: the SAM to CLIP hand-off (`V1ClipEmbeddings`: SAM's
map as patch embeddings, a class token, position embeddings resized with an antialiased bicubic
filter), the projector over [CLIP, SAM] features, and the 2-D layout of a page's tokens: the
local crops as one grid, then the global view, each row closed by `image_newline`, then
`view_seperator`.

The published checkpoint's weights load by their original names (`model.sam_model.blocks.N.norm1`,
`model.vision_model.transformer.layers.N.self_attn.qkv_proj`, `model.layers.N.mlp.experts.E.gate_proj`,
...) through a conversion mapping registered with transformers (`register_checkpoint_conversion_mapping`),
and `save_pretrained` writes them back in that layout, so a saved model loads with the official
remote code and with vLLM's `DeepseekOCRForCausalLM`. config.json keeps the published schema
(`language_config`, `vision_config.width`, `projector_config`, the decoder keys at the top level).

    model = DeepseekOCRForCausalLM.from_pretrained("deepseek-ai/DeepSeek-OCR", dtype="auto")
    out = model(input_ids=ids, pixel_values=global_views, pixel_values_local=crops,
                images_spatial_crop=grids, labels=labels, num_items_in_batch=n)

Inputs are tensors, so `.to()` moves them: `pixel_values` (one global view per example,
`(B, 3, base, base)`), `pixel_values_local` (every example's crops concatenated in order,
`(sum of crops, 3, size, size)`, or None), `images_spatial_crop` (`(B, 2)`: crop columns and rows,
`(1, 1)` for none). Image positions are the `<image>` tokens of `input_ids`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPVisionConfig,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.core_model_loading import Chunk, Concatenate, MergeModulelist, WeightConverter, WeightRenaming
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.clip.modeling_clip import CLIPEncoder
from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import (
    DeepseekOcr2SamVisionConfig,
    DeepseekOcr2TextConfig,
)
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import (
    DeepseekOcr2SamVisionEncoder,
    DeepseekOcr2TextModel,
)

MODEL_TYPE = "deepseek_vl_v2"
"""What the published v1 config.json calls itself (it was derived from DeepSeek-VL2)."""

# The published checkpoint's architecture (config.json of deepseek-ai/DeepSeek-OCR, and the
# sizes its deepencoder.py builds): the defaults of `DeepseekOcrV1Config`.
PUBLISHED_LANGUAGE: dict[str, Any] = dict(
    vocab_size=129280, hidden_size=1280, intermediate_size=6848, num_hidden_layers=12, num_attention_heads=10,
    num_key_value_heads=10, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
    moe_intermediate_size=896, first_k_dense_replace=1, topk_method="greedy", n_group=1, topk_group=1,
    max_position_embeddings=8192, bos_token_id=0, eos_token_id=1, use_mla=False, q_lora_rank=None,
    kv_lora_rank=None, qk_nope_head_dim=0, qk_rope_head_dim=0, v_head_dim=0, lm_head=True, rm_head=False,
)
PUBLISHED_SAM: dict[str, Any] = dict(width=768, layers=12, heads=12, global_attn_indexes=[2, 5, 8, 11],
                                     downsample_channels=[512, 1024])
PUBLISHED_CLIP: dict[str, Any] = dict(width=1024, layers=24, heads=16, image_size=224, patch_size=14)
# Sizes the published config.json leaves to the code (deepencoder.py builds them as constants).
SAM_CODE_DEFAULTS: dict[str, Any] = dict(out_chans=256, patch_size=16, window_size=14)
# The remote DeepseekV2Config's defaults for keys the published config.json does not set.
DECODER_CODE_DEFAULTS: dict[str, Any] = dict(rms_norm_eps=1e-6, rope_theta=10000.0, routed_scaling_factor=1.0,
                                             norm_topk_prob=False, moe_layer_freq=1, scoring_func="softmax",
                                             hidden_act="silu", attention_bias=False, pad_token_id=None)
PUBLISHED_IMAGE_TOKEN_ID = 128815
"""`<image>` in the published tokenizer."""


class DeepseekOcrV1Config(PreTrainedConfig):
    """The published v1 config.json schema, read into the sizes our modules need.

    `vision_config.width.sam_vit_b` and `vision_config.width["clip-l-14-224"]` give SAM's and CLIP's
    widths, depths and heads (the remote code hard-codes them; we read them, so a tiny v1 is the
    same code). Keys the published file leaves out take the remote code's constants:
    `sam_vit_b.out_chans` 256, `patch_size` 16, `window_size` 14; CLIP's MLP is 4 x its width.
    """

    model_type = MODEL_TYPE

    def __init__(self, language_config: dict | None = None, vision_config: dict | None = None,
                 projector_config: dict | None = None, image_token_id: int = PUBLISHED_IMAGE_TOKEN_ID,
                 candidate_resolutions: list | None = None, global_view_pos: str = "head", tile_tag: str = "2D",
                 **kwargs: Any):
        language = {**PUBLISHED_LANGUAGE, **(language_config or {})}
        # The remote DeepseekOCRConfig reads the decoder from the top level, so both places hold it;
        # a top-level value given explicitly wins.
        for key in list(PUBLISHED_LANGUAGE) + list(DECODER_CODE_DEFAULTS):
            if key in kwargs:
                language[key] = kwargs.pop(key)
        self.language_config = language
        for key, value in language.items():
            if key not in ("bos_token_id", "eos_token_id", "pad_token_id"):
                setattr(self, key, value)
        vision = dict(vision_config or {})
        width = dict(vision.get("width") or {})
        width["sam_vit_b"] = {**PUBLISHED_SAM, **width.get("sam_vit_b", {})}
        width["clip-l-14-224"] = {**PUBLISHED_CLIP, **width.get("clip-l-14-224", {})}
        self.vision_config = {"image_size": 1024, "mlp_ratio": 3.7362, "model_name": "deeplip_b_l",
                              "model_type": "vision", **vision, "width": width}
        self.projector_config = {"input_dim": 2 * width["clip-l-14-224"]["width"], "model_type": "mlp_projector",
                                 "n_embed": language["hidden_size"], "projector_type": "linear",
                                 **(projector_config or {})}
        self.image_token_id = image_token_id
        self.candidate_resolutions = candidate_resolutions or [[1024, 1024]]
        self.global_view_pos = global_view_pos
        self.tile_tag = tile_tag
        kwargs.setdefault("tie_word_embeddings", False)
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            kwargs.setdefault(key, language.get(key))
        kwargs.setdefault("auto_map", {"AutoConfig": "modeling_deepseekocr.DeepseekOCRConfig",
                                       "AutoModel": "modeling_deepseekocr.DeepseekOCRForCausalLM"})
        super().__init__(**kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        lang, sam, clip = self.language_config, self.sam_sizes, self.clip_sizes
        unsupported = {
            "language_config.use_mla": (lang.get("use_mla"), False),
            "language_config.norm_topk_prob": (lang.get("norm_topk_prob", False), False),
            "language_config.scoring_func": (lang.get("scoring_func", "softmax"), "softmax"),
            "language_config.moe_layer_freq": (lang.get("moe_layer_freq", 1), 1),
            "projector_config.projector_type": (self.projector_config["projector_type"], "linear"),
        }
        for key, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(f"DeepSeek-OCR v1 with {key}={value!r} is not supported (only {supported!r}, "
                                 "as in the published checkpoint).")
        if sam["downsample_channels"][-1] != clip["width"]:
            raise ValueError(f"SAM's last downsampling width ({sam['downsample_channels'][-1]}) must equal CLIP's "
                             f"width ({clip['width']}): SAM's map is CLIP's patch embedding.")
        if self.projector_config["input_dim"] != 2 * clip["width"]:
            raise ValueError(f"projector_config.input_dim must be CLIP's + SAM's width, {2 * clip['width']}.")

    @property
    def sam_sizes(self) -> dict[str, Any]:
        return {**SAM_CODE_DEFAULTS, **self.vision_config["width"]["sam_vit_b"]}

    @property
    def clip_sizes(self) -> dict[str, Any]:
        clip = self.vision_config["width"]["clip-l-14-224"]
        return {"ffn_hidden_size": 4 * clip["width"], **clip}

    def build_decoder_config(self) -> DeepseekOcr2TextConfig:
        """The decoder as transformers' DeepSeek-V2 MoE (OCR-2's text model) configures it."""
        lang = {**DECODER_CODE_DEFAULTS, **self.language_config}
        layers, dense = lang["num_hidden_layers"], lang["first_k_dense_replace"]
        return DeepseekOcr2TextConfig(
            vocab_size=lang["vocab_size"], hidden_size=lang["hidden_size"], intermediate_size=lang["intermediate_size"],
            num_hidden_layers=layers, num_attention_heads=lang["num_attention_heads"],
            num_key_value_heads=lang["num_key_value_heads"], n_routed_experts=lang["n_routed_experts"],
            n_shared_experts=lang["n_shared_experts"], num_experts_per_tok=lang["num_experts_per_tok"],
            moe_intermediate_size=lang["moe_intermediate_size"], topk_method=lang["topk_method"],
            n_group=lang["n_group"], topk_group=lang["topk_group"],
            routed_scaling_factor=lang["routed_scaling_factor"], max_position_embeddings=lang["max_position_embeddings"],
            rms_norm_eps=lang["rms_norm_eps"], hidden_act=lang["hidden_act"], attention_bias=lang["attention_bias"],
            rope_parameters={"rope_type": "default", "rope_theta": lang["rope_theta"]},
            mlp_layer_types=["dense"] * min(dense, layers) + ["sparse"] * max(0, layers - dense),
            bos_token_id=lang["bos_token_id"], eos_token_id=lang["eos_token_id"], pad_token_id=lang["pad_token_id"],
            initializer_range=self.initializer_range, tie_word_embeddings=False,
        )

    def build_sam_config(self) -> DeepseekOcr2SamVisionConfig:
        sam = self.sam_sizes
        return DeepseekOcr2SamVisionConfig(
            hidden_size=sam["width"], output_channels=sam["out_chans"], num_hidden_layers=sam["layers"],
            num_attention_heads=sam["heads"], image_size=self.vision_config["image_size"],
            patch_size=sam["patch_size"], window_size=sam["window_size"],
            global_attn_indexes=list(sam["global_attn_indexes"]), downsample_channels=list(sam["downsample_channels"]),
            initializer_range=self.initializer_range,
        )

    def build_clip_config(self) -> CLIPVisionConfig:
        clip = self.clip_sizes
        return CLIPVisionConfig(
            hidden_size=clip["width"], intermediate_size=clip["ffn_hidden_size"], num_hidden_layers=clip["layers"],
            num_attention_heads=clip["heads"], image_size=clip["image_size"], patch_size=clip["patch_size"],
            hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0,
        )

    @property
    def initializer_range(self) -> float:
        return self.language_config.get("initializer_range", 0.02)


def _sam_renames() -> list[WeightRenaming]:
    sam = r"^model\.sam_model\."
    pairs = [(r"blocks\.(\d+)\.norm1\.", r"layers.\1.layer_norm1."), (r"blocks\.(\d+)\.norm2\.", r"layers.\1.layer_norm2."),
             (r"blocks\.(\d+)\.attn\.", r"layers.\1.attn."), (r"blocks\.(\d+)\.mlp\.", r"layers.\1.mlp."),
             (r"patch_embed\.proj\.", "patch_embed.projection."), (r"neck\.0\.", "neck.conv1."),
             (r"neck\.1\.", "neck.layer_norm1."), (r"neck\.2\.", "neck.conv2."), (r"neck\.3\.", "neck.layer_norm2."),
             (r"net_2\.", "proj.conv1."), (r"net_3\.", "proj.conv2.")]
    return [WeightRenaming(source_patterns=sam + src, target_patterns="model.sam_model." + dst) for src, dst in pairs]


def conversion_mapping() -> list[WeightRenaming | WeightConverter]:
    """Original checkpoint names -> our module tree (reversed by transformers on save)."""
    decoder = [WeightRenaming(source_patterns=rf"^model\.{part}\.", target_patterns=f"model.language_model.{part}.")
               for part in ("embed_tokens", "layers", "norm")]
    clip_qkv = []
    for kind in ("weight", "bias"):
        split = WeightConverter(source_patterns=f"self_attn.qkv_proj.{kind}",
                                target_patterns=[f"self_attn.{p}_proj.{kind}" for p in "qkv"], operations=[Chunk(dim=0)])
        # Only CLIP's fused projections: the decoder's q/k/v must not be fused back on save.
        split.scope_prefix, split.base_model_prefix = "vision_model", "model"
        clip_qkv.append(split)
    experts = [
        WeightConverter(source_patterns=["mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight"],
                        target_patterns="mlp.experts.gate_up_proj", operations=[MergeModulelist(dim=0), Concatenate(dim=1)]),
        WeightConverter(source_patterns="mlp.experts.*.down_proj.weight", target_patterns="mlp.experts.down_proj",
                        operations=[MergeModulelist(dim=0)]),
    ]
    return [*_sam_renames(), *decoder, *clip_qkv, *experts]


class V1ClipEmbeddings(nn.Module):
    """CLIP's embeddings where SAM's feature map replaces the patch convolution (DeepEncoder's hand-off).

    The checkpoint still holds CLIP's patch convolution; it is kept (and saved) but never run.
    Position embeddings are resized to the SAM grid (16 x 16 for 1024 px, 10 x 10 for 640 px
    crops) with an antialiased bicubic filter, as v1 does.
    """

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                                         stride=config.patch_size, bias=False)
        num_positions = (config.image_size // config.patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(num_positions, config.hidden_size)
        # Persistent, as in the checkpoint.
        self.register_buffer("position_ids", torch.arange(num_positions).expand((1, -1)))

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        patches = sam_features.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        embeddings = torch.cat([cls, patches], dim=1)
        return embeddings + self._positions(sam_features.shape[-1]).to(embeddings.dtype)

    def _positions(self, side: int) -> torch.Tensor:
        table = self.position_embedding.weight
        source = math.isqrt(table.shape[0] - 1)
        if source == side:
            return table.unsqueeze(0)
        grid = table[1:].reshape(1, source, source, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
        grid = grid.to(table.dtype).permute(0, 2, 3, 1).reshape(side * side, -1)
        return torch.cat([table[:1], grid]).unsqueeze(0)


class V1ClipVision(nn.Module):
    """v1's CLIP-L/14: our embeddings, a pre-LayerNorm, transformers' `CLIPEncoder` (`transformer`)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.embeddings = V1ClipEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # sic: the checkpoint's name
        self.transformer = CLIPEncoder(config)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        hidden = self.pre_layrnorm(self.embeddings(sam_features))
        return self.transformer(inputs_embeds=hidden).last_hidden_state


class V1Projector(nn.Module):
    """The linear projector over [CLIP, SAM] features (`projector.layers` in the checkpoint)."""

    def __init__(self, input_dim: int, n_embed: int):
        super().__init__()
        self.layers = nn.Linear(input_dim, n_embed)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class DeepseekOcrV1Model(nn.Module):
    """Vision (SAM, CLIP, projector, layout embeddings) and the decoder, under the checkpoint's names."""

    def __init__(self, config: DeepseekOcrV1Config):
        super().__init__()
        attn = config._attn_implementation or "sdpa"
        sam_config, clip_config, text_config = config.build_sam_config(), config.build_clip_config(), config.build_decoder_config()
        # SAM's relative-position bias rules out flash attention; it runs on SDPA then.
        sam_config._attn_implementation = "eager" if attn == "eager" else "sdpa"
        clip_config._attn_implementation = attn
        text_config._attn_implementation = attn
        self.sam_model = DeepseekOcr2SamVisionEncoder(sam_config)
        self.vision_model = V1ClipVision(clip_config)
        n_embed = config.projector_config["n_embed"]
        self.projector = V1Projector(config.projector_config["input_dim"], n_embed)
        self.image_newline = nn.Parameter(torch.zeros(n_embed))
        self.view_seperator = nn.Parameter(torch.zeros(n_embed))  # sic: the checkpoint's name
        self.language_model = DeepseekOcr2TextModel(text_config)
        self.image_token_id = config.image_token_id

    def view_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) views -> (N, (S/64)^2, n_embed): CLIP and SAM features side by side, projected."""
        sam = self.sam_model(pixels).last_hidden_state
        clip = self.vision_model(sam)
        return self.projector(torch.cat([clip[:, 1:], sam.flatten(2).transpose(1, 2)], dim=-1))

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        rows, _, dim = grid.shape
        return torch.cat([grid, self.image_newline.to(grid.dtype).expand(rows, 1, dim)], dim=1).reshape(-1, dim)

    def image_features(self, pixel_values: torch.Tensor, pixel_values_local: torch.Tensor | None,
                       images_spatial_crop: torch.Tensor) -> torch.Tensor:
        """Every example's visual tokens in order: [crops grid, global grid] with row newlines, then the separator."""
        global_features = self.view_features(pixel_values)
        local_features = self.view_features(pixel_values_local) if pixel_values_local is not None else None
        grids = images_spatial_crop.tolist()
        needed = sum(c * r for c, r in grids if (c, r) != (1, 1))
        have = 0 if local_features is None else local_features.shape[0]
        if needed != have:
            raise ValueError(f"images_spatial_crop asks for {needed} crops in all, pixel_values_local holds {have}.")
        pieces, offset = [], 0
        side = math.isqrt(global_features.shape[1])
        for index, (cols, rows) in enumerate(grids):
            if (cols, rows) != (1, 1):
                crops = local_features[offset:offset + cols * rows]
                offset += cols * rows
                crop_side = math.isqrt(crops.shape[1])
                tiled = crops.reshape(rows, cols, crop_side, crop_side, -1).permute(0, 2, 1, 3, 4)
                pieces.append(self._with_newlines(tiled.reshape(rows * crop_side, cols * crop_side, -1)))
            pieces.append(self._with_newlines(global_features[index].reshape(side, side, -1)))
            pieces.append(self.view_seperator.to(global_features.dtype)[None])
        return torch.cat(pieces)

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                pixel_values_local: torch.Tensor | None = None, images_spatial_crop: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: Any):
        if inputs_embeds is None:
            inputs_embeds = self.language_model.embed_tokens(input_ids)
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError("Page images need input_ids: their <image> tokens mark where the features go.")
            if images_spatial_crop is None:
                images_spatial_crop = torch.ones(pixel_values.shape[0], 2, dtype=torch.long)
            features = self.image_features(pixel_values, pixel_values_local, images_spatial_crop)
            mask = (input_ids == self.image_token_id).unsqueeze(-1)
            if int(mask.sum()) != features.shape[0]:
                raise ValueError(f"The prompt has {int(mask.sum())} <image> tokens but the pages give "
                                 f"{features.shape[0]} visual tokens; build inputs with the family's encode_prompt.")
            inputs_embeds = inputs_embeds.masked_scatter(mask, features.to(inputs_embeds.dtype))
        return self.language_model(input_ids=None, inputs_embeds=inputs_embeds, **kwargs)


VISION_INPUTS = ("pixel_values", "pixel_values_local", "images_spatial_crop")


class DeepseekOCRForCausalLM(PreTrainedModel, GenerationMixin):
    """DeepSeek-OCR v1. Named like the reference class, so config.json's `architectures` is what the
    official code and vLLM (`DeepseekOCRForCausalLM`) look for."""

    config_class = DeepseekOcrV1Config
    config: DeepseekOcrV1Config
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_attention_backend = True
    _no_split_modules = ["DeepseekOcr2SamVisionLayer", "CLIPEncoderLayer", "DeepseekOcr2TextDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def __init__(self, config: DeepseekOcrV1Config):
        super().__init__(config)
        self.model = DeepseekOcrV1Model(config)
        self.lm_head = nn.Linear(config.language_config["hidden_size"], config.language_config["vocab_size"],
                                 bias=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, DeepseekOcrV1Model):
            std = 1 / math.sqrt(module.image_newline.shape[0])
            nn.init.normal_(module.image_newline, std=std)
            nn.init.normal_(module.view_seperator, std=std)
        elif isinstance(module, V1ClipEmbeddings):
            nn.init.normal_(module.class_embedding, std=self.config.initializer_range)
            module.position_ids.copy_(torch.arange(module.position_ids.shape[1]).expand((1, -1)))

    def get_input_embeddings(self) -> nn.Module:
        return self.model.language_model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.language_model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                pixel_values_local: torch.Tensor | None = None, images_spatial_crop: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                past_key_values: Any = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int = 0, **kwargs: Any) -> CausalLMOutputWithPast:
        """`num_items_in_batch` (in kwargs) makes the loss the sum over label tokens divided by it,
        as transformers' causal-LM loss does for OCR-2; without it, the mean over this batch's tokens."""
        num_items = kwargs.pop("num_items_in_batch", None)
        outputs = self.model(input_ids=input_ids, pixel_values=pixel_values, pixel_values_local=pixel_values_local,
                             images_spatial_crop=images_spatial_crop, inputs_embeds=inputs_embeds,
                             attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, use_cache=use_cache, **kwargs)
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.language_config["vocab_size"],
                                      num_items_in_batch=num_items)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    def prepare_inputs_for_generation(self, *args: Any, is_first_iteration: bool | None = False, **kwargs: Any):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            # The pages are in the cache after the first forward.
            for key in VISION_INPUTS:
                inputs.pop(key, None)
        return inputs


# By class name (transformers' loading and saving) and by model type (PEFT converts adapter keys by model type).
for _key in (DeepseekOCRForCausalLM.__name__, MODEL_TYPE):
    if get_checkpoint_conversion_mapping(_key) is None:
        register_checkpoint_conversion_mapping(_key, conversion_mapping())
# So AutoConfig (and AutoTokenizer, which reads the config) know the published model type.
AutoConfig.register(MODEL_TYPE, DeepseekOcrV1Config, exist_ok=True)
AutoModelForCausalLM.register(DeepseekOcrV1Config, DeepseekOCRForCausalLM, exist_ok=True)
