"""Export a training checkpoint as a Hugging Face folder with a model card, and push it to the Hub.

- Without merging, a LoRA/QLoRA checkpoint becomes a PEFT adapter folder that
  `PeftModel.from_pretrained(base, folder)` loads.
- With merging (and always for full fine-tunes), the folder is a complete model that
  `load_model_and_processor(folder)` loads.

Both get the processor and a `README.md` model card whose YAML metadata (`base_model`,
datasets, evaluation results, training hyperparameters, library versions) `huggingface_hub`
parses.

`export_original` writes a checkpoint (merged) or a model in its family's *original* layout, the
one vLLM serves (`deepsynth.model.original_layout` for DeepSeek-OCR-2): that config.json, the
tensors under their original names with the routed experts per expert, the tokenizer, and
`deepsynth.json` saying what it was exported from. A LoRA checkpoint also gets `adapter/`: its
adapter in the original module names that vLLM's LoRA loader takes, for the base model exported the
same way; an adapter vLLM cannot apply is refused before anything is written. `push_to_hub` uploads a folder with the token from `HF_TOKEN`; the token is sent to the
Hub and nowhere else.

    export_checkpoint("runs/x/step-000500", "exports/x")                # adapter
    export_checkpoint("runs/x/step-000500", "exports/x-merged", merge=True)
    export_original("runs/x/step-000500", "exports/x-vllm")           # merged + vLLM adapter
    export_original("deepseek-community/DeepSeek-OCR-2", "exports/base-vllm")
    push_to_hub("exports/x", "me/deepsynth-cnn-lora")
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCardData
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from deepsynth.model.loading import family_class, load_model_and_processor, model_type_of
from deepsynth.training.checkpoint import ADAPTER_DIR, META_FILE, load_checkpoint, local_checkpoint, read_meta

EXPORT_INFO = "deepsynth.json"
"""What an original-layout export was made from (source, kind, base model, step) and whether vLLM can run it."""
SHARD_BYTES = 4 * 1024**3

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


def export_original(source: str | Path, out_dir: str | Path, *, adapter: bool = True,
                    shard_bytes: int = SHARD_BYTES) -> Path:
    """Write `source` (a step-XXXXXX checkpoint, a model folder or hub id) in its family's original layout.

    A LoRA checkpoint is merged; with `adapter`, its adapter also goes to `out_dir/adapter/` in the
    original module names (refused, before anything loads, when vLLM could not apply it).
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; export into a new folder.")
    is_checkpoint = "://" in str(source) or (Path(source) / META_FILE).exists()
    meta = read_meta(source) if is_checkpoint else None
    family = family_class(model_type_of(meta["base_model"] if meta else str(source)))
    layout = family.original_layout
    if layout is None:
        raise ValueError(f"{family.name} models are saved in their original layout already; export with --format hf.")
    lora = meta is not None and meta["mode"] != "full"
    adapter_tensors = None
    if lora and adapter:
        # Before any weights load: an adapter vLLM cannot apply is refused at once.
        adapter_tensors = layout.adapter(load_file(local_checkpoint(source) / ADAPTER_DIR / "adapter_model.safetensors"))
    if is_checkpoint:
        model, processor, _, _ = load_checkpoint(source)
    else:
        model, processor, _ = load_model_and_processor(str(source))
    if lora:
        model = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(layout.config(model.config, dtype), indent=2))
    write_original_weights(layout.tensors, model.state_dict(), out, shard_bytes)
    processor.tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    problems = layout.incompatibilities(model.config, processor)
    kind = "merged" if lora else ("full" if meta is not None else "model")
    info = {"layout": layout.name, "architecture": layout.architecture, "source": str(source), "kind": kind,
            "base_model": meta["base_model"] if meta else str(source), "step": meta["step"] if meta else None,
            "vllm_incompatibilities": problems, "adapter": adapter_tensors is not None}
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2))
    if adapter_tensors is not None:
        write_vllm_adapter(local_checkpoint(source) / ADAPTER_DIR, adapter_tensors, out / ADAPTER_DIR,
                           layout.lora_modules, meta["base_model"])
    (out / "README.md").write_text(original_card(info))
    return out


def read_export_info(folder: str | Path) -> dict[str, Any]:
    """The `deepsynth.json` of an original-layout export; FileNotFoundError for any other folder."""
    path = Path(folder) / EXPORT_INFO
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not an original-layout export (no {EXPORT_INFO}); write one with "
                                "`deepsynth export <checkpoint or model> --format original <folder>`.")
    return json.loads(path.read_text())


def write_original_weights(convert: Any, state: dict[str, torch.Tensor], out: Path, shard_bytes: int) -> None:
    """Safetensors shards of at most `shard_bytes` (one `model.safetensors` when it fits), with a progress bar."""
    total = sum(t.numel() * t.element_size() for t in state.values())
    shards: list[list[str]] = []  # tensor names per shard, for the index
    with tqdm(total=total, unit="B", unit_scale=True, desc="Writing original layout") as bar:
        for shard in _shards(convert, state, bar, shard_bytes):
            shards.append(list(shard))
            save_file(shard, out / f"shard-{len(shards):05d}.tmp", metadata={"format": "pt"})
    if len(shards) == 1:
        (out / "shard-00001.tmp").rename(out / "model.safetensors")
        return
    weight_map = {}
    for index, shard in enumerate(shards, 1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        (out / f"shard-{index:05d}.tmp").rename(out / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _shards(convert: Any, state: dict[str, torch.Tensor], bar: tqdm, shard_bytes: int
            ) -> Iterator[dict[str, torch.Tensor]]:
    shard: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in state.items():
        for key, value in convert(name, tensor):
            nbytes = value.numel() * value.element_size()
            if shard and size + nbytes > shard_bytes:
                yield shard
                shard, size = {}, 0
            shard[key] = value.detach().to("cpu").contiguous()
            size += nbytes
            bar.update(nbytes)
    if shard:
        yield shard


def write_vllm_adapter(adapter_dir: Path, tensors: dict[str, torch.Tensor], out: Path,
                       lora_modules: tuple[str, ...], base_model: str) -> None:
    """A PEFT adapter folder in the original module names, as vLLM's LoRA loader reads it."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    adapted = sorted({key.split(".lora_", 1)[0].rsplit(".", 1)[-1] for key in tensors} & set(lora_modules))
    # A regex over the decoder's layers: bare suffixes would also match the vision encoder's q_proj etc. in
    # PEFT; vLLM takes a string too. The optional language_model. lets PEFT apply it to the native model.
    target = rf"model\.(language_model\.)?layers\.\d+\.(self_attn|mlp|mlp\.shared_experts)\.({'|'.join(adapted)})"
    config.update(base_model_name_or_path=base_model, inference_mode=True, target_modules=target,
                  target_parameters=None)
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, out / "adapter_model.safetensors")


def original_card(info: dict[str, Any]) -> str:
    problems = info["vllm_incompatibilities"]
    serve = ("vLLM cannot run it: " + "; ".join(problems) + "." if problems else
             "Serve it with vLLM (`DeepseekOCR2ForCausalLM`), or with the DeepSynth summarizer's `engine: vllm`.")
    adapter = ("\n`adapter/` is the LoRA adapter in the original module names, for the base model "
               f"`{info['base_model']}` exported the same way (not for the merged weights next to it)."
               if info["adapter"] else "")
    return f"""---
library_name: vllm
pipeline_tag: image-text-to-text
tags: [deepsynth, summarization, deepseek-ocr, original-layout, {info['kind']}]
---

# {info['source']} in the {info['layout']} layout

Exported by `deepsynth export --format original` ({info['kind']}): the config.json, tensor names and
per-expert weights of `{info['layout']}`. {serve}
{adapter}
"""


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
