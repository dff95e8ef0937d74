"""Many LoRA fine-tunes on one base model: load, switch and unload adapters by name.

An `AdapterSet` owns the served model. Loading an adapter adds a named PEFT adapter to it (the
first one wraps the base model in a `PeftModel`), with the tensors read by the same
`load_trained_weights` that resumes training; unloading deletes it, and unwraps the base again
when the last one goes. `active(name)` switches the model to one adapter, to the served
checkpoint's own adapter, or to the bare base model. The set is not thread-safe: the server
holds one lock around load, switch and generate.

`load` returns a `LoadedAdapter` whose `__del__` unloads it: that is the hook Ray Serve's
`@serve.multiplexed` calls when it evicts the least recently used adapter.

    adapters = AdapterSet(model, {"legal": "runs/legal/step-000300"})
    handle = adapters.load("legal")
    with adapters.active("legal") as model:
        summaries = generate_summaries(model, processor, documents)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from deepsynth.training.checkpoint import ADAPTER_DIR, load_trained_weights, local_checkpoint

CHECKPOINT_ADAPTER = "default"  # PEFT's name for the adapter of a LoRA checkpoint loaded with load_checkpoint


class LoadedAdapter:
    """A loaded adapter; deleting it (or Serve evicting it) unloads it from the model."""

    def __init__(self, name: str, adapters: AdapterSet) -> None:
        self.name = name
        self._adapters = adapters

    def __del__(self) -> None:
        # Also runs at garbage collection after an eviction already unloaded this handle, and
        # after the same name was loaded again: unload only what this handle loaded.
        self._adapters.unload(self)


class AdapterSet:
    def __init__(self, model: Any, paths: Mapping[str, str]) -> None:
        from peft import PeftModel

        self.model = model
        self.paths = dict(paths)
        self._handles: dict[str, LoadedAdapter] = {}
        # A LoRA checkpoint served as the model keeps its own adapter, the default of every request.
        self._serves_checkpoint_adapter = isinstance(model, PeftModel)

    @property
    def loaded(self) -> list[str]:
        return list(self._handles)

    def load(self, name: str) -> LoadedAdapter:
        from peft import LoraConfig, PeftModel, get_peft_model

        if name not in self.paths:
            raise KeyError(f"Unknown adapter {name!r}; servable adapters: {sorted(self.paths)}.")
        if name in self._handles:
            return self._handles[name]
        path = local_checkpoint(self.paths[name])
        config = LoraConfig.from_pretrained(path / ADAPTER_DIR)
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(name, config)
        else:
            self.model = get_peft_model(self.model, config, adapter_name=name)
        load_trained_weights(self.model, path, "lora", adapter_name=name)
        self.model.eval()
        handle = LoadedAdapter(name, self)
        self._handles[name] = handle
        return handle

    def unload(self, handle: LoadedAdapter) -> None:
        if self._handles.get(handle.name) is not handle:
            return
        del self._handles[handle.name]
        if self._handles or self._serves_checkpoint_adapter:
            # Switch away first so the model never points at a deleted adapter.
            self.model.set_adapter(next(iter(self._handles), CHECKPOINT_ADAPTER))
            self.model.delete_adapter(handle.name)
        else:
            # A PeftModel without adapters cannot run; give back the bare base model.
            self.model = self.model.unload()

    @contextmanager
    def active(self, name: str | None) -> Iterator[Any]:
        """The model with adapter `name` switched on; None means the served model without extra adapters."""
        from peft import PeftModel

        if name is not None:
            if name not in self._handles:
                raise KeyError(f"Adapter {name!r} is not loaded; load it first.")
            self.model.set_adapter(name)
            yield self.model
        elif self._serves_checkpoint_adapter:
            self.model.set_adapter(CHECKPOINT_ADAPTER)
            yield self.model
        elif isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.model
