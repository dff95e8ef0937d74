"""Export a training checkpoint as a Hugging Face folder with a model card, and push it to the Hub.

- Without merging, a LoRA/QLoRA checkpoint becomes a PEFT adapter folder that
  `PeftModel.from_pretrained(base, folder)` loads.
- With merging (and always for full fine-tunes), the folder is a complete model that
  `load_model_and_processor(folder)` loads.

Both get the processor and a `README.md` model card whose YAML metadata (`base_model`,
datasets, evaluation results, training hyperparameters, library versions) `huggingface_hub`
parses. `push_to_hub` uploads a folder with the token from `HF_TOKEN`; the token is sent to the
Hub and nowhere else.

    export_checkpoint("runs/x/step-000500", "exports/x")                # adapter
    export_checkpoint("runs/x/step-000500", "exports/x-merged", merge=True)
    push_to_hub("exports/x", "me/deepsynth-cnn-lora")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, HfApi, ModelCardData
from safetensors.torch import load_file, save_file

from deepsynth.training.checkpoint import ADAPTER_DIR, load_checkpoint, read_meta

# Hyperparameters worth showing on a model card (the rest stay in train_config.yaml).
CARD_HYPERPARAMETERS = ("mode", "lora_rank", "lora_alpha", "lora_dropout", "lr", "batch_size", "grad_accum",
                        "max_steps", "warmup_steps", "num_workers", "strategy", "precision", "layout", "dataset")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, *, merge: bool = False) -> Path:
    """Write an adapter folder (or, with `merge` or for full fine-tunes, a model folder) with a model card."""
    checkpoint, out = Path(checkpoint), Path(out_dir)
    meta = read_meta(checkpoint)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; export into a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((checkpoint / "train_config.yaml").read_text())

    model, processor, _, _ = load_checkpoint(checkpoint)
    if meta["mode"] == "full" or merge:
        if meta["mode"] != "full":
            model = model.merge_and_unload()
        model.save_pretrained(out)
        kind = "merged" if meta["mode"] != "full" else "full"
    else:
        write_peft_adapter(checkpoint / ADAPTER_DIR, out, base_model=meta["base_model"])
        kind = "adapter"
    processor.save_pretrained(out)
    (out / "README.md").write_text(model_card(meta, config, kind, eval_reports(checkpoint)))
    return out


def write_peft_adapter(adapter_dir: Path, out: Path, base_model: str) -> None:
    """Copy an adapter so that `PeftModel.from_pretrained` loads it.

    PEFT runs transformers' legacy-checkpoint renames over adapter keys on load, and for
    DeepSeek-OCR-2 the rename of `model.layers.` also matches inside the current name
    `model.language_model.layers.`. Keys in the legacy form come out right; current ones do not.
    """
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_model
    config["inference_mode"] = True
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    legacy = {key.replace(".model.language_model.", ".model."): value for key, value in tensors.items()}
    save_file(legacy, out / "adapter_model.safetensors")


def eval_reports(checkpoint: Path) -> list[dict]:
    """The evaluation reports ray_jobs.evaluate wrote next to the checkpoint."""
    return [json.loads(path.read_text()) for path in sorted(checkpoint.glob("eval-*.json"))]


def model_card(meta: dict, config: dict, kind: str, reports: list[dict]) -> str:
    results = [
        EvalResult(
            task_type="summarization",
            dataset_type=report["dataset"],
            dataset_name=report["dataset"],
            dataset_split=report["split"],
            metric_type=metric,
            metric_name=metric.upper().replace("ROUGE", "ROUGE-"),
            metric_value=round(value, 4),
        )
        for report in reports
        for metric, value in report["rouge"].items()
    ]
    data = ModelCardData(
        base_model=meta["base_model"],
        library_name="peft" if kind == "adapter" else "transformers",
        pipeline_tag="image-text-to-text",
        tags=["deepsynth", "summarization", "deepseek-ocr", kind],
        datasets=[config["dataset"]],
        model_name=f"deepsynth-{config['run_name']}",
        eval_results=results or None,
        training_hyperparameters={key: config[key] for key in CARD_HYPERPARAMETERS},
        training_step=meta["step"],
        library_versions=meta["versions"],
    )
    load = (
        "from peft import PeftModel\n\n"
        f"base, processor, _ = load_model_and_processor({meta['base_model']!r})\n"
        'model = PeftModel.from_pretrained(base, "<this folder>")'
        if kind == "adapter"
        else 'model, processor, family = load_model_and_processor("<this folder>")'
    )
    table = "\n".join(
        f"| {r['dataset']} | {r['split']} | {r['documents']} | {r['rouge']['rouge1']:.4f} | {r['rouge']['rouge2']:.4f} "
        f"| {r['rouge']['rougeL']:.4f} | {r['repetition_rate']:.2%} |"
        for r in reports
    ) or "| not evaluated | | | | | | |"
    return f"""---
{data.to_yaml()}
---

# deepsynth-{config['run_name']}

A {'LoRA adapter for' if kind == 'adapter' else 'fine-tune of'} `{meta['base_model']}` that summarizes documents from
their page images, trained with DeepSynth ({config['mode']}, step {meta['step']}).

## Evaluation

| dataset | split | documents | ROUGE-1 | ROUGE-2 | ROUGE-L | repetition rate |
| --- | --- | --- | --- | --- | --- | --- |
{table}

## Use with transformers

```python
from deepsynth.model.loading import load_model_and_processor
{load}
```

## Use with the DeepSynth endpoint

```bash
curl -X POST http://localhost:8000/v1/summarize -H 'Content-Type: application/json' \\
  -d '{{"text": "Your long document...", "adapter": "deepsynth-{config['run_name']}"}}'
```
"""


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = True, token: str | None = None,
                endpoint: str | None = None) -> str:
    """Create `repo_id` if needed and upload `folder`; return the commit URL.

    The token defaults to `HF_TOKEN` and the endpoint to `HF_ENDPOINT` (huggingface_hub's own variables).
    """
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise ValueError("Pushing needs a Hugging Face token: set HF_TOKEN (a write token) and try again.")
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload from DeepSynth")
    return commit.commit_url
