import json

import pytest
import torch

from deepsynth.model.families import Ocr2Family
from deepsynth.model.inputs import placement, to_model
from deepsynth.model.loading import load_model_and_processor, resolve_device, resolve_dtype
from deepsynth.model.tiny import build_tiny_model
from deepsynth.model.tokens import V1_MODES


def test_tiny_model_has_the_real_architecture(tiny):
    model, processor, family = tiny
    config = model.config
    assert type(model).__name__ == "DeepseekOcr2ForConditionalGeneration"
    assert type(processor).__name__ == "DeepseekOcr2Processor"
    assert isinstance(family, Ocr2Family)
    text = config.text_config
    assert "sparse" in text.mlp_layer_types and text.n_routed_experts > 1 and text.n_shared_experts >= 1
    vision = model.model.vision_tower
    assert vision.query_768_resolution.num_embeddings == 144 and vision.query_1024_resolution.num_embeddings == 256
    assert processor.image_processor.tile_size == 768
    for token in ("<image>", processor.tokenizer.bos_token, processor.tokenizer.eos_token, processor.tokenizer.pad_token):
        assert processor.tokenizer.convert_tokens_to_ids(token) != processor.tokenizer.unk_token_id
    assert config.image_token_id == processor.image_token_id


def test_save_then_load_gives_the_same_logits(tiny, corpus_examples, tmp_path):
    from deepsynth.data.collate import SummaryCollator

    model, processor, family = tiny
    batch = SummaryCollator(family)(corpus_examples[:2])
    model.eval()
    with torch.no_grad():
        before = model(**to_model(batch.inputs, *placement(model))).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    reloaded, reprocessor, refamily = load_model_and_processor(str(tmp_path))
    rebatch = SummaryCollator(refamily)(corpus_examples[:2])
    assert torch.equal(rebatch.inputs["input_ids"], batch.inputs["input_ids"])
    reloaded.eval()
    with torch.no_grad():
        after = reloaded(**to_model(rebatch.inputs, *placement(reloaded))).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_build_refuses_to_overwrite_a_model(tiny_model_dir):
    with pytest.raises(FileExistsError, match="already holds a model"):
        build_tiny_model(tiny_model_dir)


def test_v1_loads_natively_without_remote_code(tiny_v1_dir):
    model, tokenizer, family = load_model_and_processor(str(tiny_v1_dir), v1_mode="base")
    assert type(model).__name__ == "DeepseekOCRForCausalLM" and type(model).__module__.startswith("deepsynth.")
    assert family.name == "deepseek-ocr-v1" and family.mode == V1_MODES["base"]
    assert family.image_token_id == tokenizer.convert_tokens_to_ids("<image>")


def test_an_unknown_model_type_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama'.*deepseek_ocr2"):
        load_model_and_processor(str(tmp_path))


def test_dtype_and_device_options(tiny_model_dir):
    model, _, _ = load_model_and_processor(str(tiny_model_dir), dtype="bfloat16", attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert resolve_dtype("float32") is torch.float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_tiny_model_at_the_real_checkpoint_sizes(tmp_path):
    """SAM patch 16: a 1024 px global view of 256 queries plus 768 px tiles, as in the real checkpoint."""
    from PIL import Image

    from deepsynth.data.collate import SummaryCollator

    model, processor, family = load_model_and_processor(str(build_tiny_model(tmp_path, sam_patch_size=16)))
    assert processor.image_processor.size["height"] == 1024
    assert family.count_visual_tokens(768, 768) == 257
    assert family.count_visual_tokens(1240, 1754) == 256 + 6 * 144 + 1
    batch = SummaryCollator(family, max_length=4096)(
        [{"pages": [Image.new("RGB", (1240, 1754), "white")], "summary": "Energy costs rose."}]
    )
    with torch.no_grad():
        assert torch.isfinite(model(**to_model(batch.inputs, *placement(model))).loss)
