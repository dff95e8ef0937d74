"""Load a DeepSeek-OCR-family model and its processor from a hub id or a local folder.

`load_model_and_processor` is the one loading path for training, evaluation and serving, so
what was evaluated is what is served. It reads the checkpoint's `config.json` to pick the
family:

- `deepseek_ocr2` (e.g. `deepseek-community/DeepSeek-OCR-2`, or a folder made by
  `deepsynth model init-tiny`) loads natively with `DeepseekOcr2ForConditionalGeneration`
  and `AutoProcessor`;
- DeepSeek-OCR v1 (`deepseek-ai/DeepSeek-OCR`, model type `deepseek_vl_v2`) loads natively too,
  with our `DeepseekOCRForCausalLM` (`deepsynth.model.deepseek_ocr_v1`) from the published weight
  names, and its tokenizer. The checkpoint's remote code cannot run on transformers 5.23 (it
  imports `LlamaFlashAttention2`, removed in 4.48), so it is never needed: `trust_remote_code`
  is still accepted and only reaches the tokenizer.

A Hub token, when one is needed, comes from `HF_TOKEN` (huggingface_hub reads it); it is never
logged or stored.

    loaded = load_model_and_processor("deepseek-community/DeepSeek-OCR-2", dtype="bfloat16", device="cuda")
    model, processor, family = loaded
    processor, family = load_processor("deepseek-community/DeepSeek-OCR-2")   # no weights: token counting
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from transformers import AutoProcessor, AutoTokenizer, PretrainedConfig

from deepsynth.model.families import ModelFamily, Ocr2Family, V1Family

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "deepseek-community/DeepSeek-OCR-2"
OCR2_MODEL_TYPES = {"deepseek_ocr2"}
# v1's published config reports the DeepSeek-VL2 type it was derived from.
V1_MODEL_TYPES = {"deepseek_vl_v2", "deepseekocr"}

_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LoadedModel(NamedTuple):
    model: Any
    processor: Any
    """The `DeepseekOcr2Processor` for OCR-2; the tokenizer for v1, which ships no processor class
    (`V1Family` does its image preprocessing)."""
    family: ModelFamily


def resolve_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    """Map a config string ("bfloat16") to a torch dtype; raise naming the accepted values."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}.")
    return _DTYPES[dtype]


def resolve_device(device: str) -> str:
    """"auto" picks CUDA when it is there; an explicit "cuda" without CUDA is an error, not a silent CPU run."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but torch sees no CUDA device; use device='cpu'.")
    return device


def model_type_of(name_or_path: str, revision: str | None = None) -> str:
    """Read `model_type` from the checkpoint's config.json without importing any remote code."""
    config_dict, _ = PretrainedConfig.get_config_dict(name_or_path, revision=revision)
    return config_dict.get("model_type", "")


def context_length(name_or_path: str, revision: str | None = None) -> int:
    """The decoder's positions (`max_position_embeddings`), read from config.json: the most tokens a
    prompt plus its generated summary can take (8192 for the published DeepSeek-OCR-2)."""
    config_dict, _ = PretrainedConfig.get_config_dict(name_or_path, revision=revision)
    # OCR-2 nests the decoder's settings in text_config, v1 in language_config.
    text = config_dict.get("text_config") or config_dict.get("language_config") or config_dict
    if "max_position_embeddings" not in text:
        raise ValueError(f"{name_or_path}'s config.json gives no max_position_embeddings for its decoder.")
    return int(text["max_position_embeddings"])


def family_class(model_type: str) -> type[Ocr2Family] | type[V1Family]:
    """The family that knows this model type's inputs and modules, or a clear error."""
    if model_type in OCR2_MODEL_TYPES:
        return Ocr2Family
    if model_type in V1_MODEL_TYPES:
        return V1Family
    raise ValueError(
        f"model_type {model_type!r} is not a DeepSeek-OCR model; DeepSynth loads DeepSeek-OCR-2 "
        f"({sorted(OCR2_MODEL_TYPES)}) and DeepSeek-OCR v1 ({sorted(V1_MODEL_TYPES)}) checkpoints."
    )


def load_processor(
    name_or_path: str = DEFAULT_MODEL, *, revision: str | None = None, trust_remote_code: bool = False,
    v1_mode: str = "gundam",
) -> tuple[Any, ModelFamily]:
    """The processor and family of a model without its weights (what `load_model_and_processor` pairs them with).

    A server's HTTP layer uses it to count tokens exactly as the model replica would.
    """
    if family_class(model_type_of(name_or_path, revision)) is Ocr2Family:
        processor = AutoProcessor.from_pretrained(name_or_path, revision=revision)
        return processor, Ocr2Family(processor)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    return tokenizer, V1Family(tokenizer, mode=v1_mode)


def load_model_and_processor(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "auto",
    attn_implementation: str | None = None,
    experts_implementation: str | None = None,
    device: str = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
    v1_mode: str = "gundam",
    quantization_config: Any = None,
) -> LoadedModel:
    """Load model, processor and family from a hub id or a local folder.

    Args:
        name_or_path: hub id (`deepseek-community/DeepSeek-OCR-2`) or a local model folder.
        dtype: "auto" (the checkpoint's), "float32", "bfloat16" or "float16".
        attn_implementation: e.g. "sdpa", "eager" or "flash_attention_2"; None keeps the default.
        experts_implementation: the routed experts' kernel, e.g. "eager", "batched_mm" or "grouped_mm";
            None keeps transformers' default.
        device: "cpu", "cuda", "cuda:1" or "auto". Ignored when `quantization_config` places the model.
        revision: a hub branch, tag or commit, for reproducible loads.
        trust_remote_code: passed to the tokenizer only; both families' models are native.
        v1_mode: the v1 resolution mode (tiny, small, base, large, gundam).
        quantization_config: e.g. a `BitsAndBytesConfig` for QLoRA.
    """
    torch_dtype = resolve_dtype(dtype)
    # The processor first: it refuses other model types before any weights load.
    processor, family = load_processor(name_or_path, revision=revision, trust_remote_code=trust_remote_code,
                                       v1_mode=v1_mode)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "revision": revision}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if experts_implementation is not None:
        kwargs["experts_implementation"] = experts_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        # bitsandbytes places the weights itself; moving them afterwards is not allowed.
        kwargs["device_map"] = {"": resolve_device("auto")}

    model = family.model_class.from_pretrained(name_or_path, **kwargs)

    if quantization_config is None:
        model = model.to(resolve_device(device))
    logger.info("Loaded %s (%s) with %s parameters", name_or_path, family.name, f"{model.num_parameters():,}")
    return LoadedModel(model, processor, family)
