"""Build a tiny, randomly initialised DeepSeek-OCR-2 offline: same architecture, small widths.

Weights cannot be downloaded here, so tests and the demo run on a model built from scratch:
the real `DeepseekOcr2ForConditionalGeneration` (SAM encoder, vision encoder with learned
queries, MoE decoder with routed and shared experts), a byte-level BPE tokenizer trained on
the built-in corpus, and a real `DeepseekOcr2Processor`. Only widths and depths shrink; the
768 px tiles and the 144/256 learned queries are the real ones, and the processor counts
visual tokens exactly as for the real checkpoint.

Two SAM patch sizes are offered:
- 32 (the default): a quarter of SAM's cost. The processor's 16 px x 4 arithmetic still gives
  144 queries per 768 px view, so the global view is 768 px too, and a page costs 145 visual
  tokens. This is what tests and the CPU demo use.
- 16: the real checkpoint's sizes, a 1024 px global view of 256 queries plus 768 px tiles.

The weights are stored in bfloat16, as the published checkpoint's are, so `dtype="auto"` loads
the tiny model in bf16 exactly where it loads the real one in bf16 (evaluation and serving);
`dtype="float32"` stores float32 for tests that need exact arithmetic.

The folder it writes is a normal Hugging Face model folder, loaded like the real checkpoint:

    build_tiny_model("runs/tiny")            # or: deepsynth model init-tiny runs/tiny
    model, processor, family = load_model_and_processor("runs/tiny")
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    DeepseekOcr2Config,
    DeepseekOcr2ForConditionalGeneration,
    DeepseekOcr2Processor,
    GenerationConfig,
    PreTrainedTokenizerFast,
)
from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

from deepsynth.data.corpus import SPLITS, generate_corpus
from deepsynth.model.deepseek_ocr_v1 import DeepseekOCRForCausalLM, DeepseekOcrV1Config
from deepsynth.model.families import IMAGE_TOKEN
from deepsynth.model.full_size import published_config
from deepsynth.model.tokens import PUBLISHED_OCR2

# The real checkpoint's special tokens, so prompts and decoding behave the same on both.
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
PROMPT_WORDS = "Summarize the document. Summarize this report in one sentence. Free OCR."


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes) with the processor's special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD, IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    # Like the real tokenizer, encoding a prompt starts with BOS.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=8192
    )


SAM_PATCH_SIZES = {
    # patch size -> (SAM input side, attention window in patches, processor global view side)
    32: (768, 6, 768),
    16: (1024, 14, 1024),
}


def tiny_config(
    vocab_size: int, bos_id: int, eos_id: int, pad_id: int, image_token_id: int, sam_patch_size: int = 32
) -> DeepseekOcr2Config:
    """The real architecture with small widths and depths."""
    if sam_patch_size not in SAM_PATCH_SIZES:
        raise ValueError(f"sam_patch_size must be one of {sorted(SAM_PATCH_SIZES)}, got {sam_patch_size}.")
    image_size, window_size, _ = SAM_PATCH_SIZES[sam_patch_size]
    sam = dict(
        hidden_size=32,
        output_channels=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=sam_patch_size,
        window_size=window_size,
        # Windowed attention only: at patch 16 one global layer over 64x64 patches costs six
        # times the rest of the tiny vision tower on a CPU.
        global_attn_indexes=[],
        # The last downsampling width must equal the vision encoder's hidden size.
        downsample_channels=[32, 64],
        # SAM's default init (std 1e-10) suits loading pretrained weights, but a random tower
        # initialised that way maps every page to the same features and the pages could not matter.
        initializer_range=0.02,
    )
    encoder = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        vocab_size=1,  # the vision encoder takes embeddings, never token ids
        # With the usual std 0.02 a random encoder passes little of the page through its
        # residual stream: features of different pages differ by ~10 %, and a tiny decoder needs
        # many hundred steps to pick that up. At 0.1 they differ by 20-40 %.
        initializer_range=0.1,
    )
    text = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        mlp_layer_types=["dense", "sparse"],
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        # bitsandbytes quantizes in blocks of 64 inputs; narrower layers break its CPU kernels (QLoRA tests).
        moe_intermediate_size=64,
        max_position_embeddings=8192,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    return DeepseekOcr2Config(
        vision_config={"sam_config": sam, "encoder_config": encoder}, text_config=text, image_token_id=image_token_id
    )


TINY_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def build_tiny_model(out_dir: str | Path, seed: int = 0, vocab_size: int = 1024, sam_patch_size: int = 32,
                     dtype: str = "bfloat16") -> Path:
    """Write a tiny random-initialised DeepSeek-OCR-2 (model, tokenizer, processor) to `out_dir`, weights in `dtype`."""
    out = _empty_folder(out_dir, dtype)
    tokenizer = corpus_tokenizer(seed, vocab_size)
    config = tiny_config(
        vocab_size=len(tokenizer),
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        sam_patch_size=sam_patch_size,
    )
    description = f"small widths and SAM patch size {sam_patch_size}"
    return _write_model(out, config, tokenizer, SAM_PATCH_SIZES[sam_patch_size][2], seed, dtype, "tiny", description,
                        "cpu")


def build_full_width_model(out_dir: str | Path, num_layers: int = 3, seed: int = 0, dtype: str = "bfloat16",
                           device: str = "cpu") -> Path:
    """Write the published DeepSeek-OCR-2 with `num_layers` decoder layers and random weights to `out_dir`.

    Every width, the 64 experts, the whole vision tower and the processor's 1024 px global view are
    the real model's (`published_config`), so memory and speed per layer are the real ones; 3 layers
    make 1.29 B parameters (2.6 GB in bf16), 12 the full-size model. The tokenizer is the tiny
    model's, inside the real vocabulary. `device="cuda"` initialises the weights on the GPU (faster).
    """
    out = _empty_folder(out_dir, dtype)
    tokenizer = corpus_tokenizer(seed, 1024)
    config = published_config(
        num_layers, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    description = f"the published widths and {num_layers} of its 12 decoder layers"
    return _write_model(out, config, tokenizer, PUBLISHED_OCR2.global_size, seed, dtype, "full-width", description,
                        device)


def tiny_v1_config(vocab_size: int, bos_id: int, eos_id: int, pad_id: int, image_token_id: int,
                   global_attn_indexes: tuple[int, ...] = ()) -> DeepseekOcrV1Config:
    """DeepSeek-OCR v1's architecture with small widths and the real image geometry.

    SAM keeps its 16 px patches, 1024 px input, 14-patch windows and two stride-2 convolutions
    (a 1024 px view gives 16 x 16 features, a 640 px crop 10 x 10, as in the published model);
    CLIP keeps its 224/14 position table (16 x 16 + 1); only widths and depths shrink. SAM's
    global-attention layers (2, 5, 8, 11 in the published model) are left out by default: one
    global layer over 64 x 64 patches costs more than the rest of the tiny tower on a CPU.
    """
    language = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, first_k_dense_replace=1,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
        # bitsandbytes quantizes in blocks of 64 inputs; narrower layers break its CPU kernels (QLoRA tests).
        moe_intermediate_size=64, max_position_embeddings=8192, bos_token_id=bos_id, eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    width = {
        "sam_vit_b": dict(width=32, layers=2, heads=2, global_attn_indexes=list(global_attn_indexes),
                          out_chans=32, downsample_channels=[64, 64]),
        "clip-l-14-224": dict(width=64, layers=2, heads=4, image_size=224, patch_size=14),
    }
    return DeepseekOcrV1Config(language_config=language, vision_config={"image_size": 1024, "width": width},
                               image_token_id=image_token_id)


def build_tiny_v1_model(out_dir: str | Path, seed: int = 0, vocab_size: int = 1024, dtype: str = "bfloat16",
                        global_attn_indexes: tuple[int, ...] = ()) -> Path:
    """Write a tiny random-initialised DeepSeek-OCR v1 (weights in the published layout, tokenizer) to `out_dir`."""
    out = _empty_folder(out_dir, dtype)
    tokenizer = corpus_tokenizer(seed, vocab_size)
    config = tiny_v1_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                            tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), global_attn_indexes)
    torch.manual_seed(seed)
    model = DeepseekOCRForCausalLM._from_config(config, dtype=torch.float32).to(TINY_DTYPES[dtype])
    _seed_zero_inits(model, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    description = "small widths, the real 1024 px global view and 640 px crops"
    card = _model_card(seed, model.num_parameters(), "tiny", description, dtype)
    (out / "README.md").write_text(card.replace("DeepSeek-OCR-2", "DeepSeek-OCR v1").replace(
        "`DeepseekOcr2ForConditionalGeneration`", "DeepSeek-OCR v1 (`DeepseekOCRForCausalLM`, published weight names)"))
    return out


def _seed_zero_inits(model: torch.nn.Module, seed: int) -> None:
    # SAM's position table and relative-position tables start at zero (right for loading weights); a
    # random tower needs them random, or every position looks the same.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)


def corpus_tokenizer(seed: int, vocab_size: int) -> PreTrainedTokenizerFast:
    docs = [d for split in SPLITS for d in generate_corpus(split, 200, seed=seed)]
    return train_tokenizer([d["text"] for d in docs] + [d["summary"] for d in docs] + [PROMPT_WORDS], vocab_size)


def _empty_folder(out_dir: str | Path, dtype: str) -> Path:
    if dtype not in TINY_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(TINY_DTYPES)}, got {dtype!r}.")
    out = Path(out_dir)
    if (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a model; pick an empty folder or delete it first.")
    return out


def _write_model(out: Path, config: DeepseekOcr2Config, tokenizer: PreTrainedTokenizerFast, global_view: int,
                 seed: int, dtype: str, kind: str, description: str, device: str) -> Path:
    image_processor = DeepseekOcr2ImageProcessorPil(size={"height": global_view, "width": global_view})
    processor = DeepseekOcr2Processor(image_processor=image_processor, tokenizer=tokenizer)
    torch.manual_seed(seed)
    # The tiny model is initialised in float32 and then stored in `dtype`; a full-width one directly in
    # `dtype`, since a float32 copy would double its peak. config.json records the dtype either way.
    init_dtype = torch.float32 if kind == "tiny" else TINY_DTYPES[dtype]
    with torch.device(device):
        model = DeepseekOcr2ForConditionalGeneration._from_config(config, dtype=init_dtype).to(TINY_DTYPES[dtype])
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "README.md").write_text(_model_card(seed, model.num_parameters(), kind, description, dtype))
    return out


def _model_card(seed: int, num_parameters: int, kind: str, description: str, dtype: str) -> str:
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
tags: [deepsynth, deepseek-ocr-2, {kind}, random-weights, testing]
---
# {kind.capitalize()} DeepSeek-OCR-2 (random weights)

A randomly initialised `DeepseekOcr2ForConditionalGeneration` ({num_parameters:,} parameters, seed {seed})
built offline by `deepsynth model init-{kind}` for tests and benchmarks. It has the real architecture with
{description}, stored in {dtype}; it knows nothing until trained. Its tokenizer was trained on
DeepSynth's built-in corpus.
"""
