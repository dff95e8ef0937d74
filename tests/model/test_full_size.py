"""The published DeepSeek-OCR-2 at full size, on the meta device: its parameter count and what each mode costs."""

import pytest

from deepsynth.model.full_size import PUBLISHED_PARAMETERS_B, published_config
from deepsynth.model.memory import format_memory_table
from deepsynth.training.modes import size_choices

@pytest.fixture(scope="module")
def tables():
    tables = size_choices(published_config())
    for name, rows in tables.items():
        print(f"\n{name}\n{format_memory_table(rows)}")
    return {name: {row.group: row for row in rows} for name, rows in tables.items()}


def test_the_full_size_config_has_the_published_parameter_count_and_groups(tables):
    full = tables["full"]
    assert round(full["total"].parameters / 1e9, 3) == PUBLISHED_PARAMETERS_B
    # The breakdown of the published checkpoint, in billions.
    assert round(full["experts"].parameters / 1e9, 3) == 2.422
    assert round(full["embeddings"].parameters / 1e9, 2) == 0.33
    assert round(full["vision"].parameters / 1e9, 2) == 0.45
    assert full["total"].weight_bytes == 2 * full["total"].parameters, "bf16: two bytes a parameter"


def test_full_mode_trains_the_decoder_without_router_or_projector(tables):
    config = published_config()
    full = tables["full"]
    routers = (config.text_config.num_hidden_layers - 1) * config.text_config.n_routed_experts * 1280
    assert full["vision"].trainable == 0
    assert full["other decoder"].trainable == full["other decoder"].parameters - routers
    assert full["experts"].trainable == full["experts"].parameters
    # bf16 gradients and two bf16 AdamW moments per trainable parameter.
    assert full["total"].gradient_bytes == 2 * full["total"].trainable
    assert full["total"].optimizer_bytes == 4 * full["total"].trainable


def test_lora_presets_at_full_size(tables):
    default, every = tables["lora default"], tables["lora all"]
    assert default["experts"].trainable == 0, "default adapts no routed expert"
    # all: one rank-16 pair per expert for gate_up [2I, H] and down [H, I], in each of the 11 MoE layers.
    per_layer = 64 * 16 * ((1280 + 2 * 896) + (896 + 1280))
    assert every["experts"].trainable == 11 * per_layer
    assert every["other decoder"].trainable == default["other decoder"].trainable
    assert every["vision"].trainable == default["vision"].trainable == 0


def test_qlora_stores_the_experts_in_four_bits_and_halves_lora_again(tables):
    lora, qlora = tables["lora default"], tables["qlora"]
    assert qlora["experts"].weight_bytes < 0.27 * lora["experts"].weight_bytes
    assert qlora["vision"].weight_bytes == lora["vision"].weight_bytes, "the vision tower stays bf16, not fp32"
    assert qlora["embeddings"].weight_bytes == lora["embeddings"].weight_bytes
    assert qlora["total"].trainable == lora["total"].trainable
    assert qlora["total"].weight_bytes <= 0.45 * lora["total"].weight_bytes
