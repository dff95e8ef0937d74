"""Export: a PEFT-loadable adapter, a merged model with the same logits, and a model card that parses."""

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel

from deepsynth.data.collate import SummaryCollator
from deepsynth.export import export_checkpoint
from deepsynth.model.inputs import placement, to_model
from deepsynth.model.loading import load_model_and_processor
from deepsynth.training.checkpoint import load_checkpoint


def logits(model, family, examples):
    with torch.no_grad():
        return model(**to_model(SummaryCollator(family)(examples).inputs, *placement(model))).logits


def test_adapter_export_loads_with_peft(lora_checkpoint, tiny_model_dir, corpus_examples, tmp_path):
    out = export_checkpoint(lora_checkpoint, tmp_path / "adapter")
    reference, _, family, _ = load_checkpoint(lora_checkpoint)
    base, _, _ = load_model_and_processor(str(tiny_model_dir))
    peft_model = PeftModel.from_pretrained(base, out).eval()
    torch.testing.assert_close(logits(peft_model, family, corpus_examples[:2]),
                               logits(reference, family, corpus_examples[:2]), rtol=0, atol=1e-6)


def test_merged_export_loads_as_a_model_with_the_adapters_logits(lora_checkpoint, corpus_examples, tmp_path):
    out = export_checkpoint(lora_checkpoint, tmp_path / "merged", merge=True)
    reference, _, family, _ = load_checkpoint(lora_checkpoint)
    merged, _, merged_family = load_model_and_processor(str(out))
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}, "saved in the base checkpoint's dtype"
    # Merging rounds the fp32 LoRA delta into bf16 weights, so the logits agree to bf16's precision.
    eps = torch.finfo(torch.bfloat16).eps
    torch.testing.assert_close(logits(merged.eval(), merged_family, corpus_examples[:2]),
                               logits(reference, family, corpus_examples[:2]), rtol=eps, atol=eps)


def test_model_card_parses_and_carries_the_eval_metrics(lora_checkpoint, tiny_model_dir, tmp_path):
    out = export_checkpoint(lora_checkpoint, tmp_path / "card")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == str(tiny_model_dir)
    assert card.data.library_name == "peft"
    metrics = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert metrics == {"rouge1": 0.61, "rouge2": 0.42, "rougeL": 0.6}
    assert card.data.to_dict()["training_hyperparameters"]["lora_rank"] == 4
    assert "transformers" in card.data.to_dict()["library_versions"]
    assert "PeftModel.from_pretrained" in card.text and "/v1/summarize" in card.text


def test_export_refuses_a_non_empty_folder(lora_checkpoint, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_checkpoint(lora_checkpoint, tmp_path / "busy")
