import pytest

from deepsynth.training.modes import DEFAULT_LORA_SUFFIXES, find_lora_targets, prepare_trainable, trainable_share


def test_lora_targets_are_decoder_linears_only(tiny):
    model, _, family = tiny
    targets = find_lora_targets(model, family)
    assert targets and all(t.startswith("model.language_model.") for t in targets)
    assert {t.rsplit(".", 1)[-1] for t in targets} <= set(DEFAULT_LORA_SUFFIXES)
    # The vision encoder has q_proj/k_proj/v_proj too; none of them may be adapted.
    vision_names = {n for n, _ in model.model.vision_tower.named_modules()}
    assert any(n.endswith("q_proj") for n in vision_names)
    assert not any(t.startswith("model.vision_tower") for t in targets)


def test_lora_targets_can_be_narrowed_and_must_match(tiny):
    model, _, family = tiny
    assert all(t.endswith("q_proj") for t in find_lora_targets(model, family, ["q_proj"]))
    with pytest.raises(ValueError, match="match no linear module of the decoder; choose from"):
        find_lora_targets(model, family, ["qkv"])


def test_lora_trains_only_adapters(tiny):
    model, _, family = tiny
    model, rows = prepare_trainable(model, family, "lora", rank=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert 0 < trainable_share(rows) < 0.1


def test_full_mode_trains_decoder_and_projector_not_vision(tiny):
    model, _, family = tiny
    model, rows = prepare_trainable(model, family, "full")
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())
    assert model.model.multi_modal_projector.weight.requires_grad
    assert rows[-1].trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_full_mode_can_freeze_the_projector(tiny):
    model, _, family = tiny
    model, _ = prepare_trainable(model, family, "full", freeze_projector=True)
    assert not model.model.multi_modal_projector.weight.requires_grad
    assert all(p.requires_grad for p in model.model.language_model.parameters())
