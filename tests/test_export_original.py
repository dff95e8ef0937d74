"""Export in the original DeepSeek-OCR-2 layout: round trips into the native class, the layout's facts, vLLM adapters.

The expected layout is derived from transformers' own conversion registry (the mapping that
`convert_deepseek_ocr2_weights_to_hf.py` loads the original checkpoint with), never from our
inverse table, and loading back goes through transformers' `from_pretrained`, which applies it.
"""

import json
import re
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoConfig, DeepseekOcr2ForConditionalGeneration
from transformers.conversion_mapping import get_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.models.deepseek_ocr2.image_processing_pil_deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

from deepsynth.cli import main as cli
from deepsynth.data.collate import SummaryCollator
from deepsynth.export import EXPORT_INFO, export_original
from deepsynth.model.full_size import published_config
from deepsynth.model.inputs import placement, to_model
from deepsynth.model.loading import load_model_and_processor
from deepsynth.model.original_layout import original_config, original_state_dict, vllm_adapter, vllm_incompatibilities
from deepsynth.training.checkpoint import load_checkpoint, save_checkpoint, trained_state_dict
from deepsynth.training.config import TrainConfig
from deepsynth.training.modes import prepare_trainable


def logits(model, family, examples):
    with torch.no_grad():
        return model(**to_model(SummaryCollator(family)(examples).inputs, *placement(model))).logits


def exported_tensors(folder):
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    tensors = {}
    for name in files:
        with safe_open(folder / name, "pt") as f:
            tensors.update({key: f.get_tensor(key) for key in f.keys()})
    return tensors


def check_conversion_preimage(original, native, text_config):
    """`original` (name -> shape) is what transformers' deepseek_ocr2 conversion mapping turns into `native`."""
    renames = [r for r in get_checkpoint_conversion_mapping("deepseek_ocr2") if isinstance(r, WeightRenaming)]
    expert = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
    forward, experts = {}, {}
    for key, shape in original.items():
        if (hit := expert.match(key)) is not None:
            experts.setdefault(int(hit[1]), {})[(int(hit[2]), hit[3])] = tuple(shape)
            continue
        for rename in renames:  # transformers' renames, applied forward (original -> native)
            key = re.sub(rename.source_patterns[0], rename.target_patterns[0], key)
        forward[key] = tuple(shape)
    fused = {key for key in native if key.endswith(("experts.gate_up_proj", "experts.down_proj"))}
    assert forward == {key: tuple(native[key]) for key in set(native) - fused}
    moe_layers = [i for i, kind in enumerate(text_config.mlp_layer_types) if kind == "sparse"]
    assert sorted(experts) == moe_layers
    hidden, inner = text_config.hidden_size, text_config.moe_intermediate_size
    per_layer = {(e, p): (hidden, inner) if p == "down" else (inner, hidden)
                 for e in range(text_config.n_routed_experts) for p in ("gate", "up", "down")}
    assert all(found == per_layer for found in experts.values())


def load_back(folder, native_dir):
    """The original-layout folder into the native class, through transformers' conversion mapping."""
    model, info = DeepseekOcr2ForConditionalGeneration.from_pretrained(
        folder, config=AutoConfig.from_pretrained(native_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def base_modules(model_dir):
    return DeepseekOcr2ForConditionalGeneration.from_pretrained(model_dir).named_modules()


def checkpoint(tiny, tiny_model_dir, tmp_path, mode, targets="default"):
    model, processor, family = tiny
    model, _ = prepare_trainable(model, family, mode, rank=4, alpha=8, targets=targets)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)  # as if trained
    config = TrainConfig(model=str(tiny_model_dir), mode=mode, run_name=f"orig-{mode}", lora_rank=4, lora_alpha=8,
                         lora_targets=targets, lora_dropout=0.0)
    return save_checkpoint(tmp_path / f"run-{mode}-{targets}", 3, model=model, processor=processor, config=config,
                           family_name=family.name, metrics={"val_loss": 1.0}, weights=trained_state_dict(model))


def test_full_checkpoint_round_trips_bitwise(tiny, tiny_model_dir, corpus_examples, tmp_path):
    ck = checkpoint(tiny, tiny_model_dir, tmp_path, "full")
    out = export_original(ck, tmp_path / "full")
    reference, _, family, _ = load_checkpoint(ck)
    back = load_back(out, tiny_model_dir)
    expected = reference.state_dict()
    assert back.state_dict().keys() == expected.keys()
    assert all(torch.equal(back.state_dict()[key], value) for key, value in expected.items())
    assert {p.dtype for p in back.parameters()} == {torch.bfloat16}, "stored in bf16, as the published weights"
    assert torch.equal(logits(back, family, corpus_examples[:2]), logits(reference, family, corpus_examples[:2]))
    info = json.loads((out / EXPORT_INFO).read_text())
    assert info["kind"] == "full" and info["step"] == 3 and not info["adapter"]
    assert info["vllm_incompatibilities"], "the tiny vision tower is not the one vLLM builds in"


def test_lora_checkpoint_exports_merged_weights_and_a_vllm_adapter(lora_checkpoint, tiny_model_dir, corpus_examples,
                                                                   tmp_path):
    out = export_original(lora_checkpoint, tmp_path / "lora")
    reference, _, family, _ = load_checkpoint(lora_checkpoint)
    merged = reference.merge_and_unload()
    back = load_back(out, tiny_model_dir)
    assert all(torch.equal(back.state_dict()[key], value) for key, value in merged.state_dict().items())
    assert torch.equal(logits(back, family, corpus_examples[:2]), logits(merged, family, corpus_examples[:2]))

    # The adapter: original module names, the layers vLLM adapts, the checkpoint's numbers.
    with safe_open(lora_checkpoint / "adapter" / "adapter_model.safetensors", "pt") as f:
        trained = {key: f.get_tensor(key) for key in f.keys()}
    with safe_open(out / "adapter" / "adapter_model.safetensors", "pt") as f:
        served = {key: f.get_tensor(key) for key in f.keys()}
    vllm_key = re.compile(r"^base_model\.model\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(shared_experts\.)?"
                          r"(gate|up|down)_proj)\.lora_[AB]\.weight$")
    assert len(served) == len(trained) and all(vllm_key.match(key) for key in served), sorted(served)[:4]
    for key, value in trained.items():
        assert torch.equal(served[key.replace(".model.language_model.layers.", ".model.layers.")], value)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    decoder = [name for name, _ in reference.named_modules() if ".language_model.layers." in name
               and name.endswith(("_proj",)) and "lora_" not in name and ".experts" not in name]
    assert decoder and all(re.fullmatch(config["target_modules"], name.removeprefix("base_model.model."))
                           for name in decoder)
    assert not any(re.fullmatch(config["target_modules"], name) for name, _ in base_modules(tiny_model_dir)
                   if ".language_model." not in name)
    # Applied to the base model (PEFT maps the original names as transformers does), it is the checkpoint's adapter.
    base, _, _ = load_model_and_processor(str(tiny_model_dir))
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    unmerged = load_checkpoint(lora_checkpoint).model  # merge_and_unload above changed `reference` in place
    torch.testing.assert_close(logits(adapted, family, corpus_examples[:2]),
                               logits(unmerged, family, corpus_examples[:2]), rtol=0, atol=1e-6)


def test_key_set_and_shapes_are_the_conversion_registrys_preimage(tiny_model_dir, tmp_path):
    # Small shards, as the 6.8 GB published model needs (4 GB each): the index must load like one file.
    out = export_original(tiny_model_dir, tmp_path / "model", shard_bytes=256 * 1024)
    assert len(set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    original = exported_tensors(out)
    native = DeepseekOcr2ForConditionalGeneration.from_pretrained(tiny_model_dir).state_dict()
    config = AutoConfig.from_pretrained(tiny_model_dir)
    check_conversion_preimage({k: v.shape for k, v in original.items()}, {k: v.shape for k, v in native.items()},
                              config.text_config)
    back = load_back(out, tiny_model_dir).state_dict()
    assert all(torch.equal(back[key], value) for key, value in native.items())
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["DeepseekOCR2ForCausalLM"] and written["model_type"] == "deepseek_vl_v2"
    assert written["language_config"]["first_k_dense_replace"] == 1
    assert (out / "tokenizer.json").exists()


# The published deepseek-ai/DeepSeek-OCR-2 config.json (language_config, vision_config, projector_config).
PUBLISHED_LANGUAGE = dict(vocab_size=129280, hidden_size=1280, intermediate_size=6848, moe_intermediate_size=896,
                          num_hidden_layers=12, num_attention_heads=10, num_key_value_heads=10, n_routed_experts=64,
                          n_shared_experts=2, num_experts_per_tok=6, first_k_dense_replace=1, bos_token_id=0,
                          eos_token_id=1)


def test_full_size_model_maps_to_the_published_layout_on_meta():
    with torch.device("meta"):
        model = DeepseekOcr2ForConditionalGeneration(published_config())
    original = original_state_dict(model.state_dict())
    check_conversion_preimage({k: v.shape for k, v in original.items()},
                              {k: v.shape for k, v in model.state_dict().items()}, model.config.text_config)
    config = original_config(model.config)
    assert {key: config["language_config"][key] for key in PUBLISHED_LANGUAGE} == PUBLISHED_LANGUAGE
    assert config["vision_config"]["width"] == {
        "sam_vit_b": {"width": 768, "layers": 12, "heads": 12, "global_attn_indexes": [2, 5, 8, 11]},
        "qwen2-0-5b": {"dim": 896}}
    assert config["vision_config"]["image_size"] == 1024
    assert (config["projector_config"]["input_dim"], config["projector_config"]["n_embed"],
            config["projector_config"]["projector_type"]) == (896, 1280, "linear")
    experts = [key for key in original if ".mlp.experts." in key]
    assert len(experts) == 11 * 64 * 3
    assert original["model.layers.5.mlp.experts.63.up_proj.weight"].shape == (896, 1280)
    assert original["model.layers.5.mlp.experts.63.down_proj.weight"].shape == (1280, 896)
    assert original["model.projector.layers.weight"].shape == (1280, 896)
    assert original["model.qwen2_model.query_1024.weight"].shape == (256, 896)
    assert original["model.sam_model.blocks.11.attn.qkv.weight"].shape == (2304, 768)
    assert sum(t.numel() for t in original.values()) == 3_389_119_360
    processor = SimpleNamespace(image_processor=DeepseekOcr2ImageProcessorPil(size={"height": 1024, "width": 1024}))
    assert vllm_incompatibilities(model.config, processor) == []


def test_adapters_vllm_cannot_apply_are_refused(tiny, tiny_model_dir, tmp_path, capsys):
    ck = checkpoint(tiny, tiny_model_dir, tmp_path, "lora", targets="all")
    with pytest.raises(ValueError, match="lora_targets: default"):
        export_original(ck, tmp_path / "refused")
    assert not (tmp_path / "refused").exists(), "refused before anything is written"
    # The CLI says the same, exit 2; without the adapter the merged weights export.
    assert cli(["export", str(ck), "--format", "original", str(tmp_path / "cli")]) == 2
    assert "lora_targets: default" in capsys.readouterr().err
    assert cli(["export", str(ck), "--format", "original", "--no-adapter", str(tmp_path / "merged")]) == 0
    assert not (tmp_path / "merged" / "adapter").exists() and (tmp_path / "merged" / "model.safetensors").exists()
    # The vision tower and the projector are not adaptable either.
    for module in ("model.vision_tower.vision_encoder.layers.0.self_attn.q_proj", "model.multi_modal_projector"):
        with pytest.raises(ValueError, match="language model's linear layers"):
            vllm_adapter({f"base_model.model.{module}.lora_A.weight": torch.zeros(2, 2)})
