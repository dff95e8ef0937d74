import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from deepsynth.data.collate import SummaryCollator
from deepsynth.model.freezing import format_table, freeze_vision
from deepsynth.model.inputs import placement, to_model


def snapshot(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def test_freeze_table_counts_the_vision_tower_as_frozen(tiny):
    model, _, _ = tiny
    rows = {row.module: row for row in freeze_vision(model)}
    vision_params = sum(p.numel() for p in model.model.vision_tower.parameters())
    assert rows["vision_tower"].parameters == vision_params and rows["vision_tower"].trainable == 0
    assert rows["language_model"].trainable == rows["language_model"].parameters > 0
    assert rows["total"].parameters == sum(p.numel() for p in model.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    assert model.model.multi_modal_projector.weight.requires_grad, "the projector trains unless asked otherwise"
    assert "vision_tower" in format_table(list(rows.values()))


def test_include_projector_freezes_projector_and_separator(tiny):
    model, _, _ = tiny
    freeze_vision(model, include_projector=True)
    assert not model.model.multi_modal_projector.weight.requires_grad
    assert not model.model.view_separator.requires_grad
    assert all(p.requires_grad for p in model.model.language_model.parameters())


def test_vision_name_inside_the_decoder_is_not_frozen(tiny):
    """A decoder module whose name contains 'vision' must stay trainable: freezing is by reference."""
    model, _, _ = tiny
    layer = model.model.language_model.layers[0]
    layer.vision_gate = torch.nn.Linear(4, 4)
    freeze_vision(model, include_projector=True)
    assert layer.vision_gate.weight.requires_grad


def test_a_model_without_a_vision_tower_is_refused():
    text_only = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="has none"):
        freeze_vision(text_only)


def test_training_steps_leave_the_vision_tower_bitwise_unchanged(tiny, corpus_examples):
    model, _, family = tiny
    freeze_vision(model)
    vision_before = snapshot(model.model.vision_tower)
    decoder_before = snapshot(model.model.language_model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
    batch = SummaryCollator(family)(corpus_examples[:2])
    model.train()
    for _ in range(3):
        model(**to_model(batch.inputs, *placement(model))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for name, param in model.model.vision_tower.named_parameters():
        assert torch.equal(param, vision_before[name]), f"vision tensor {name} changed"
        assert param.grad is None
    changed = [n for n, p in model.model.language_model.named_parameters() if not torch.equal(p, decoder_before[n])]
    assert len(changed) > len(decoder_before) // 2, "most decoder tensors were updated"
