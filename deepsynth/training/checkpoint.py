"""Self-describing checkpoints: `step-000123/` folders that load on their own.

A checkpoint folder holds
- `adapter/` (a PEFT adapter, for lora/qlora) or `decoder.safetensors` (the trained weights, for full);
- the processor (`save_pretrained`), so the folder tokenizes and renders like the run did;
- `train_config.yaml`, the run's full `TrainConfig`;
- `meta.json`: step, metrics, base model, mode, family, library versions and the `template`
  (layout, page limit, prompt and generation defaults) that evaluation and serving reuse;
- the resume state: `optimizer.pt` (optimizer and scheduler; `deepspeed/` shards under ZeRO)
  and one `rank-N.pt` per worker with its RNG states and data position.

A checkpoint is complete or invisible. Its files are written to `step-000123.tmp/` and renamed;
Ray Train then copies the folder to storage file by file, which is not atomic, so meta.json is not
part of that copy: `publish_meta` writes it last, once every rank's files are in storage, and
nothing lists, loads, serves or evaluates a folder without one. Serving, evaluation and tests load
a checkpoint through `load_checkpoint` (via `load_source`, which also takes a base model).

    path = save_checkpoint(out_dir, step, model=model, processor=processor, config=config, ...)
    model, processor, family, template = load_checkpoint(path)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pyarrow.fs as pafs
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

import deepsynth
from deepsynth.data.prepared import filesystem, join
from deepsynth.model.loading import load_model_and_processor
from deepsynth.model.tokens import v1_mode_for
from deepsynth.template import Template

DECODER_WEIGHTS = "decoder.safetensors"
ADAPTER_DIR = "adapter"
META_FILE = "meta.json"
PENDING_META = "meta.pending.json"
"""meta.json's content as uploaded with the rest, for a resume to publish if a crash cut the run off before."""


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def library_versions() -> dict[str, str]:
    import peft
    import ray
    import transformers

    return {
        "deepsynth": deepsynth.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "ray": ray.__version__,
    }


def trained_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (requires_grad), on CPU, contiguous, by their model names."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(parent: str | Path, step: int, write_files: Callable[[Path], None]) -> Path:
    """Create `parent/step-XXXXXX/` atomically: `write_files` fills a temp folder that is then renamed."""
    final = Path(parent) / step_dir_name(step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_files(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def save_model_files(
    folder: Path, *, model: nn.Module, processor: Any, config: Any, weights: dict[str, torch.Tensor]
) -> None:
    """The trained weights (adapter or decoder), processor and config: what inference needs, but for meta.json,
    which `publish_meta` writes once the rest is in storage."""
    if config.mode == "full":
        save_file(weights, folder / DECODER_WEIGHTS)
    else:
        from peft import get_peft_model_state_dict

        model.peft_config["default"].save_pretrained(folder / ADAPTER_DIR)
        # PEFT stores tensors without the adapter's name, as PeftModel.save_pretrained does.
        adapter = get_peft_model_state_dict(model, state_dict=weights)
        save_file({k: v.contiguous() for k, v in adapter.items()}, folder / ADAPTER_DIR / "adapter_model.safetensors")
    processor.save_pretrained(folder)
    (folder / "train_config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))


def checkpoint_meta(*, step: int, config: Any, family_name: str, metrics: dict[str, float],
                    files: dict[str, int]) -> dict:
    """meta.json's content: what a reader needs to load the folder, and the files (with sizes) that make it complete."""
    return {
        "step": step,
        "metrics": metrics,
        "base_model": config.model,
        "mode": config.mode,
        "family": family_name,
        "template": Template.from_train_config(config).to_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": library_versions(),
        "files": files,
    }


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file under `folder`, by its path relative to it, with its size."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def is_complete(checkpoint_dir: str, meta: dict) -> bool:
    """Whether every file meta.json lists is in the folder at its size (a copy or a deletion cut short is not).

    Checkpoints from before meta.json listed its files count as complete, as they were then.
    """
    files = meta.get("files")
    if files is None:
        return True
    fs, path = filesystem(checkpoint_dir)
    infos = fs.get_file_info([join(path, name) for name in files])
    return all(info.type == pafs.FileType.File and info.size == files[info.path[len(path) + 1:]] for info in infos)


def publish_meta(checkpoint_dir: str, meta: dict) -> None:
    """Write meta.json into a checkpoint folder in storage, last, after every other file is there.

    meta.json is the completion marker: a folder without it is not listed, loaded or served. On a
    local or mounted filesystem it appears whole (written beside, synced, renamed); on object stores a
    single PUT is atomic already.
    """
    fs, path = filesystem(checkpoint_dir)
    body = json.dumps(meta, indent=2).encode()
    if isinstance(fs, pafs.LocalFileSystem):
        final = Path(path) / META_FILE
        tmp = final.with_name(META_FILE + ".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        directory = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
        return
    with fs.open_output_stream(join(path, META_FILE)) as f:
        f.write(body)


def publish_missing_meta(checkpoint_dir: str, meta: dict) -> None:
    """`publish_meta`, unless the folder has its meta.json already."""
    fs, path = filesystem(checkpoint_dir)
    if fs.get_file_info(join(path, META_FILE)).type == pafs.FileType.NotFound:
        publish_meta(checkpoint_dir, meta)


def unpublish_meta(checkpoint_dir: str) -> None:
    """Remove a checkpoint folder's meta.json (if any) before its files are written again: invisible until re-published."""
    fs, path = filesystem(checkpoint_dir)
    try:
        fs.delete_file(join(path, META_FILE))
    except FileNotFoundError:
        pass


def save_checkpoint(parent: str | Path, step: int, *, model: nn.Module, processor: Any, config: Any, family_name: str,
                    metrics: dict[str, float], weights: dict[str, torch.Tensor]) -> Path:
    """A complete `parent/step-XXXXXX/` outside a training run (tests, conversions): the files, then meta.json."""
    path = write_checkpoint(parent, step, lambda folder: save_model_files(
        folder, model=model, processor=processor, config=config, weights=weights))
    publish_meta(str(path), checkpoint_meta(step=step, config=config, family_name=family_name, metrics=metrics,
                                            files=file_sizes(path)))
    return path


def local_checkpoint(path: str | Path) -> Path:
    """A checkpoint as a local folder: itself, or for an `s3://`, `gs://` (any pyarrow) URI a copy in the cache.

    The copy goes to `$DEEPSYNTH_CACHE/checkpoints/` (default `~/.cache/deepsynth`), named after the URI,
    and is reused while complete. Only a complete checkpoint is copied, into a temp folder renamed at the end.
    """
    if "://" not in str(path):
        return Path(path)
    uri = str(path).rstrip("/")
    cache = Path(os.environ.get("DEEPSYNTH_CACHE", Path.home() / ".cache" / "deepsynth")) / "checkpoints"
    local = cache / hashlib.sha256(uri.encode()).hexdigest()[:16] / uri.rsplit("/", 1)[-1]
    if (local / META_FILE).exists() and is_complete(str(local), json.loads((local / META_FILE).read_text())):
        return local
    fs, remote = filesystem(uri)
    try:
        with fs.open_input_stream(join(remote, META_FILE)) as f:
            meta = json.loads(f.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} is not a DeepSynth checkpoint (no meta.json); pass a step-XXXXXX folder.") from None
    if not is_complete(uri, meta):
        raise FileNotFoundError(f"{uri} is an incomplete checkpoint: files its meta.json lists are missing or cut short.")
    tmp = local.with_name(local.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pafs.copy_files(remote, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    shutil.rmtree(local, ignore_errors=True)
    os.replace(tmp, local)
    return local


def read_meta(path: str | Path) -> dict:
    """A checkpoint's meta.json; raises FileNotFoundError for a folder that is not a complete checkpoint."""
    path = local_checkpoint(path)
    meta_file = Path(path) / META_FILE
    if not meta_file.exists():
        raise FileNotFoundError(f"{path} is not a DeepSynth checkpoint (no meta.json); pass a step-XXXXXX folder.")
    meta = json.loads(meta_file.read_text())
    if not is_complete(str(path), meta):
        raise FileNotFoundError(f"{path} is an incomplete checkpoint: files its meta.json lists are missing or cut "
                                "short (a copy or deletion was interrupted); use another step-XXXXXX folder.")
    return meta


def read_template(path: str | Path) -> Template:
    """The template a checkpoint was trained with (from train_config.yaml for checkpoints older than templates)."""
    meta = read_meta(path)
    if "template" in meta:
        return Template.from_dict(meta["template"])
    config = yaml.safe_load((local_checkpoint(path) / "train_config.yaml").read_text())
    return Template(layout=config["layout"], max_pages=config["max_pages"], prompt=config["prompt"])


class LoadedCheckpoint(NamedTuple):
    """What evaluation scores and the server serves: the model, its processor and family, and its template."""

    model: Any
    processor: Any
    family: Any
    template: Template


def load_trained_weights(model: nn.Module, path: str | Path, mode: str, adapter_name: str = "default") -> None:
    """Load a checkpoint's trained tensors into a model prepared for the same mode (resume).

    For lora/qlora the tensors go into the PEFT adapter `adapter_name`, so a server can hold
    several checkpoints' adapters on one base model.
    """
    path = Path(path)
    if mode == "full":
        missing = model.load_state_dict(load_file(path / DECODER_WEIGHTS), strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"{path} holds weights this model lacks: {missing.unexpected_keys[:5]}")
    else:
        # set_peft_model_state_dict would apply transformers' legacy-checkpoint key renames to
        # these already-current names (model.language_model -> model.language_model.language_model)
        # and load nothing; inserting the adapter name is all the mapping there is.
        adapter = load_file(path / ADAPTER_DIR / "adapter_model.safetensors")
        named = {re.sub(r"\.(lora_[AB])\.weight$", rf".\1.{adapter_name}.weight", k): v for k, v in adapter.items()}
        result = model.load_state_dict(named, strict=False)
        missing = [key for key in result.missing_keys if "lora_" in key and f".{adapter_name}." in key]
        if result.unexpected_keys or missing:
            raise ValueError(
                f"{path}'s adapter does not fit this model: unexpected {result.unexpected_keys[:3]}, missing {missing[:3]}."
            )


def load_checkpoint(
    path: str | Path, *, dtype: str = "auto", device: str = "cpu", trust_remote_code: bool = False
) -> LoadedCheckpoint:
    """Load a checkpoint for inference: the base model with the trained weights or adapter applied, and its template.

    `path` is a step-XXXXXX folder, or its `s3://` / `gs://` URI (copied to the local cache first). A QLoRA adapter is applied to the base model in `dtype`, not in 4 bits. `dtype="auto"` is the
    base checkpoint's own (bf16 for the published DeepSeek-OCR-2 and the tiny model).
    """
    path = local_checkpoint(path)
    meta = read_meta(path)
    # Training never changes the processor, so the base model's is the checkpoint's.
    template = read_template(path)
    base, processor, family = load_model_and_processor(
        meta["base_model"], dtype=dtype, device=device, trust_remote_code=trust_remote_code,
        v1_mode=v1_mode_for(template.layout),
    )
    if meta["mode"] == "full":
        load_trained_weights(base, path, "full")
        model = base
    else:
        from peft import LoraConfig, get_peft_model

        # PeftModel.from_pretrained (peft 0.21 with transformers 5.23) loads none of this
        # architecture's adapter keys and only warns; building the wrapper and loading the
        # tensors ourselves fails loudly instead.
        model = get_peft_model(base, LoraConfig.from_pretrained(path / ADAPTER_DIR))
        load_trained_weights(model, path, meta["mode"])
    model.eval()
    return LoadedCheckpoint(model, processor, family, template)


def load_source(
    checkpoint: str | Path | None, model: str | None, *, dtype: str = "auto", device: str = "cpu"
) -> LoadedCheckpoint:
    """What evaluation scores and the server serves, in eval mode: a `step-XXXXXX` checkpoint or a base model.

    `checkpoint` goes through `load_checkpoint`, `model` (hub id or folder) through `load_model_and_processor`
    and gets the default `Template()`.
    """
    if (checkpoint is None) == (model is None):
        raise ValueError("Give exactly one of a checkpoint (a step-XXXXXX folder) and a model (hub id or folder).")
    if checkpoint is not None:
        return load_checkpoint(checkpoint, dtype=dtype, device=device)
    loaded = load_model_and_processor(model, dtype=dtype, device=device)
    loaded.model.eval()
    return LoadedCheckpoint(*loaded, Template())
