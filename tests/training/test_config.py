import pytest

from deepsynth.training.config import TrainConfig, load_config
from ray_jobs.train import check_lora_targets

CONFIGS = ["cpu_smoke", "lora_ocr2", "qlora_ocr2", "full_ocr2", "zero2_ocr2", "zero3_ocr2"]


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load(name):
    config = load_config(f"ray_jobs/configs/{name}.yaml")
    assert isinstance(config, TrainConfig)


def test_overrides_apply_with_yaml_types():
    config = load_config("ray_jobs/configs/cpu_smoke.yaml", ["lr=1e-4", "max_steps=3", "lora_targets=q_proj,v_proj"])
    assert config.lr == 1e-4 and config.max_steps == 3 and config.lora_targets == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("lerning_rate=1", "Unknown config key 'lerning_rate'"),
        ("lr=-0.1", "lr must be positive"),
        ("batch_size=two", "'batch_size' expects"),
        ("mode=adapter", "mode must be one of"),
        ("strategy=fsdp", "strategy must be one of"),
        ("zero_stage=4", "zero_stage"),
        ("layout=letter", "layout"),
        ("novalue", "key=value"),
    ],
)
def test_bad_values_name_the_flag(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("ray_jobs/configs/cpu_smoke.yaml", [override])


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ValueError, match="Did you mean lr"):
        load_config(None, ["lrr=0.1"])


def test_lora_targets_that_match_nothing_fail_before_training(tiny_model_dir):
    config = TrainConfig(model=str(tiny_model_dir), lora_targets=["qkv_projection"])
    with pytest.raises(ValueError, match="lora_targets \\[.qkv_projection.\\] match no module"):
        check_lora_targets(config)
    check_lora_targets(TrainConfig(model=str(tiny_model_dir), lora_targets=["q_proj"]))
