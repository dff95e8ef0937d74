"""The document template: how a model expects to be asked, from training through evaluation to serving.

A model trained on A4 pages with a custom instruction reads 768 px pages and the default
instruction worse, so what training used travels with the checkpoint: `meta.json` holds a
`template` (page layout, page limit, prompt and generation defaults), `load_checkpoint` returns
it, and evaluation and serving use it unless their caller sets a value explicitly. A base model
(no checkpoint) gets `Template()`, the defaults training starts from.

    template = Template.from_train_config(config)    # training, into meta.json
    loaded = load_source(checkpoint, None)           # evaluation and serving
    summaries = generate_summaries(loaded.model, loaded.processor, docs, prompt=loaded.template.prompt,
                                   options=loaded.template.generation)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from deepsynth.data.collate import DEFAULT_PROMPT
from deepsynth.data.render import get_layout
from deepsynth.evaluation.generation import GenerationOptions

DEFAULT_LAYOUT = "ocr2-page"
DEFAULT_MAX_PAGES = 6


@dataclass(frozen=True)
class Template:
    layout: str = DEFAULT_LAYOUT
    """Page layout text documents are rendered with (deepsynth.data.render.LAYOUTS)."""
    max_pages: int = DEFAULT_MAX_PAGES
    """Most pages per document the model was trained on."""
    prompt: str = DEFAULT_PROMPT
    """Instruction placed after the page images."""
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    """Decoding defaults (length, beams, repetition guard)."""

    def __post_init__(self) -> None:
        get_layout(self.layout)  # raises naming the known layouts
        if self.max_pages < 1:
            raise ValueError(f"max_pages must be at least 1, got {self.max_pages}.")

    @classmethod
    def from_train_config(cls, config: Any) -> Template:
        return cls(layout=config.layout, max_pages=config.max_pages, prompt=config.prompt)

    @classmethod
    def from_dict(cls, values: dict) -> Template:
        return cls(**{**values, "generation": GenerationOptions(**values.get("generation", {}))})

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, *, layout: str | None = None, max_pages: int | None = None, prompt: str | None = None,
                       **generation: Any) -> Template:
        """This template with every argument that is not None replacing its value; the rest go to `generation`."""
        chosen = {k: v for k, v in generation.items() if v is not None}
        return Template(
            layout=layout if layout is not None else self.layout,
            max_pages=max_pages if max_pages is not None else self.max_pages,
            prompt=prompt if prompt is not None else self.prompt,
            generation=replace(self.generation, **chosen),
        )
