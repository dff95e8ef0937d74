import json

import pytest
import torch

from deepsynth.data.collate import SummaryCollator
from deepsynth.model.inputs import placement, to_model
from deepsynth.training.checkpoint import (
    load_checkpoint,
    read_meta,
    save_checkpoint,
    trained_state_dict,
    write_checkpoint,
)
from deepsynth.training.config import TrainConfig
from deepsynth.training.modes import prepare_trainable


def test_a_failed_write_leaves_no_checkpoint(tmp_path):
    def explode(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_checkpoint(tmp_path, 7, explode)
    assert not (tmp_path / "step-000007").exists()
    path = write_checkpoint(tmp_path, 7, lambda folder: (folder / "ok").write_text("1"))
    assert path.name == "step-000007" and (path / "ok").exists()
    assert not (tmp_path / "step-000007.tmp").exists()


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_checkpoint_loads_to_the_same_logits(tiny, tiny_model_dir, corpus_examples, tmp_path, mode):
    model, processor, family = tiny
    model, _ = prepare_trainable(model, family, mode, rank=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)  # as if trained
    config = TrainConfig(model=str(tiny_model_dir), mode=mode)
    path = save_checkpoint(
        tmp_path, 3, model=model, processor=processor, config=config, family_name=family.name,
        metrics={"val_loss": 1.5}, weights=trained_state_dict(model))

    meta = read_meta(path)
    assert meta["step"] == 3 and meta["mode"] == mode and meta["metrics"] == {"val_loss": 1.5}
    assert json.loads((path / "meta.json").read_text())["base_model"] == str(tiny_model_dir)
    batch = SummaryCollator(family)(corpus_examples[:2])
    model.eval()
    loaded = load_checkpoint(path).model
    with torch.no_grad():
        inputs = to_model(batch.inputs, *placement(model))
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_not_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a DeepSynth checkpoint"):
        read_meta(tmp_path)
