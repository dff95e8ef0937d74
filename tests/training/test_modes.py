import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from deepsynth.data.collate import SummaryCollator
from deepsynth.data.render import get_layout, render_pages
from deepsynth.model.inputs import placement, to_model
from deepsynth.model.loading import load_model_and_processor
from deepsynth.model.memory import memory_table, nf4_bytes
from deepsynth.model.quantize import Nf4Experts
from deepsynth.training.config import TrainConfig
from deepsynth.training.modes import (
    DEFAULT_LORA_SUFFIXES,
    find_lora_targets,
    load_for_training,
    prepare_trainable,
    trainable_share,
)


def test_default_lora_targets_are_decoder_linears_only(tiny):
    model, _, family = tiny
    targets = find_lora_targets(model, family)
    assert targets.modules and all(t.startswith("model.language_model.") for t in targets.modules)
    assert {t.rsplit(".", 1)[-1] for t in targets.modules} <= set(DEFAULT_LORA_SUFFIXES)
    assert targets.parameters == [], "default touches no routed expert"
    # The vision encoder has q_proj/k_proj/v_proj too; none of them may be adapted.
    vision_names = {n for n, _ in model.model.vision_tower.named_modules()}
    assert any(n.endswith("q_proj") for n in vision_names)
    assert not any(t.startswith("model.vision_tower") for t in targets.modules)


def test_all_adds_the_routed_experts_of_every_moe_layer(tiny):
    model, _, family = tiny
    targets = find_lora_targets(model, family, "all")
    assert targets.modules == find_lora_targets(model, family).modules
    assert targets.parameters == ["model.language_model.layers.1.mlp.experts.gate_up_proj",
                                  "model.language_model.layers.1.mlp.experts.down_proj"]
    model, rows = prepare_trainable(model, family, "lora", rank=4, alpha=8, targets="all")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".mlp.experts." in n for n in trainable) and all("lora_" in n for n in trainable)
    experts = {r.group: r for r in rows}["experts"]
    # One rank-4 pair per expert for gate_up [2I, H] and down [H, I] (tiny: 4 experts, H 64, I 64).
    assert experts.trainable == 4 * 4 * ((64 + 128) + (64 + 64))


def test_lora_targets_can_be_narrowed_and_must_match(tiny):
    model, _, family = tiny
    assert all(t.endswith("q_proj") for t in find_lora_targets(model, family, ["q_proj"]).modules)
    only_down = find_lora_targets(model, family, ["experts.down_proj"])
    assert only_down.modules == [] and only_down.parameters == ["model.language_model.layers.1.mlp.experts.down_proj"]
    with pytest.raises(ValueError, match="match no module of the decoder; choose from .*experts.gate_up_proj"):
        find_lora_targets(model, family, ["qkv"])
    with pytest.raises(ValueError, match="not a preset"):
        find_lora_targets(model, family, "everything")


def test_routed_expert_lora_needs_no_dropout_and_no_quantized_base():
    with pytest.raises(ValueError, match="need lora_dropout: 0"):
        TrainConfig(lora_targets="all", lora_dropout=0.05)
    with pytest.raises(ValueError, match="do not combine with mode=qlora"):
        TrainConfig(mode="qlora", lora_targets=["q_proj", "experts.gate_up_proj"], lora_dropout=0.0)
    assert TrainConfig(lora_targets="all", lora_dropout=0.0).lora_targets == "all"
    assert TrainConfig(lora_targets="q_proj,v_proj").lora_targets == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="lora_targets must be"):
        TrainConfig(lora_targets=[{}])


def test_lora_trains_only_adapters(tiny):
    model, _, family = tiny
    model, rows = prepare_trainable(model, family, "lora", rank=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert 0 < trainable_share(rows) < 0.1
    assert rows[-1].trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_full_mode_trains_the_decoder_but_not_vision_projector_or_router_by_default(tiny):
    model, _, family = tiny
    model, rows = prepare_trainable(model, family, "full")
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert not model.model.multi_modal_projector.weight.requires_grad
    routers = family.router_parts(model)
    assert routers and not any(p.requires_grad for gate in routers for p in gate.parameters())
    router_ids = {id(p) for gate in routers for p in gate.parameters()}
    assert all(p.requires_grad for p in model.model.language_model.parameters() if id(p) not in router_ids)
    assert rows[-1].trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_full_mode_can_train_the_projector_and_the_router(tiny):
    model, _, family = tiny
    model, _ = prepare_trainable(model, family, "full", freeze_projector=False, train_router=True)
    assert model.model.multi_modal_projector.weight.requires_grad
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())


def page_batch(family, corpus_examples):
    layout = get_layout("ocr2-page")
    return SummaryCollator(family)([{"pages": render_pages(r["text"], layout), "summary": r["summary"]}
                                    for r in corpus_examples[:2]])


@pytest.mark.parametrize("implementation", ["grouped_mm", "batched_mm"])
def test_experts_implementations_give_the_eager_loss_and_gradients(tiny_model_dir, corpus_examples, implementation):
    results = {}
    for name in ("eager", implementation):
        model, _, family = load_model_and_processor(str(tiny_model_dir), dtype="float32", experts_implementation=name)
        assert model.config.text_config._experts_implementation == name
        batch = page_batch(family, corpus_examples)
        loss = model(**to_model(batch.inputs, "cpu", placement(model)[1])).loss
        loss.backward()
        results[name] = loss.detach(), model.model.language_model.layers[1].mlp.experts.gate_up_proj.grad
    (eager_loss, eager_grad), (loss, grad) = results["eager"], results[implementation]
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert eager_grad.abs().sum() > 0
    torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-7)


def test_qlora_stores_experts_and_linears_in_four_bits_and_upcasts_nothing(tiny_model_dir, corpus_examples):
    model, _, family = load_for_training(str(tiny_model_dir), "qlora", dtype="bfloat16", device="cpu",
                                         compute_dtype=torch.bfloat16)
    experts = model.model.language_model.layers[1].mlp.experts
    assert isinstance(experts, Nf4Experts) and len(experts.gate_up) == 4
    assert all(isinstance(m, bnb.nn.Linear4bit) for m in [*experts.gate_up, *experts.down])
    assert isinstance(model.model.language_model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert not any(p.dim() == 3 for p in model.parameters()), "no fused bf16 expert tensor is left"
    model, rows = prepare_trainable(model, family, "qlora", rank=4, alpha=8)
    frozen_dtypes = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen_dtypes == {torch.bfloat16, torch.uint8}, "frozen weights stay bf16 or 4-bit, never fp32"

    # The stored bytes are bitsandbytes' own; the meta-device accounting's formula must match them.
    groups = {r.group: r for r in rows}
    tiny_fused = 2 * 4 * 64 * 64 + 4 * 64 * 64  # gate_up [4, 128, 64] and down [4, 64, 64]
    per_tensor_tables = 8 * (16 + 256) * 4  # each expert matrix keeps its NF4 code and the absmax scales' code
    formula = 4 * nf4_bytes(128 * 64) + 4 * nf4_bytes(64 * 64)
    assert groups["experts"].parameters == tiny_fused
    assert groups["experts"].weight_bytes == formula + per_tensor_tables

    batch = page_batch(family, corpus_examples)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    inputs = to_model(batch.inputs, "cpu", placement(model)[1])
    losses = []
    for _ in range(3):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_four_bit_experts_route_like_the_fused_module(tiny_model_dir):
    model, _, _ = load_model_and_processor(str(tiny_model_dir), dtype="float32", experts_implementation="eager")
    fused = model.model.language_model.layers[1].mlp.experts
    quantized = Nf4Experts.from_fused(fused, torch.float32)
    # The fused module with the 4-bit weights dequantized: the same numbers, routed by transformers' own loop.
    with torch.no_grad():
        for name, layers in (("gate_up_proj", quantized.gate_up), ("down_proj", quantized.down)):
            getattr(fused, name).copy_(torch.stack([
                bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float() for m in layers]))
    torch.manual_seed(0)
    hidden = torch.randn(12, 64)
    top_k_index = torch.randint(0, 4, (12, 2))
    top_k_weights = torch.rand(12, 2)
    with torch.no_grad():
        torch.testing.assert_close(quantized(hidden, top_k_index, top_k_weights), fused(hidden, top_k_index, top_k_weights),
                                   rtol=1e-4, atol=1e-5)
    assert isinstance(quantized.gate_up[0], nn.Module) and not any(p.requires_grad for p in quantized.parameters())
