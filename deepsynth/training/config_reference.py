"""The configuration reference: `TrainConfig`'s fields, types, defaults and docstrings as Markdown.

The field docstrings in `config.py` are the source; `docs/configuration.md` is generated from
them (`deepsynth config-reference --out docs/configuration.md`) and a test fails when the two differ.

    text = config_reference()
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from dataclasses import dataclass

from deepsynth.training.config import TrainConfig


@dataclass(frozen=True)
class FieldDoc:
    name: str
    type: str
    default: object
    doc: str
    section: str


def field_docs(cls: type = TrainConfig) -> list[FieldDoc]:
    """Each dataclass field in source order, with the `# --- section ---` it sits under and its docstring."""
    source = inspect.getsource(cls)
    body = ast.parse(source).body[0].body
    lines = source.splitlines()
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    docs = []
    for i, node in enumerate(body):
        if not isinstance(node, ast.AnnAssign):
            continue
        name = node.target.id
        following = body[i + 1] if i + 1 < len(body) else None
        doc = ""
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            doc = inspect.cleandoc(following.value.value)
        headings = [m.group(1) for ln in lines[: node.lineno - 1] if (m := re.match(r"\s*# --- (.+) ---", ln))]
        docs.append(FieldDoc(name, ast.unparse(node.annotation), defaults[name], doc, headings[-1] if headings else ""))
    return docs


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_reference(cls: type = TrainConfig) -> str:
    """Markdown tables of every field of `cls`, grouped by section."""
    out = [
        "# Configuration reference",
        "",
        ("<!-- Generated from deepsynth/training/config.py by `deepsynth config-reference --out docs/configuration.md`;"
         " do not edit by hand. -->"),
        "",
        "Training runs are configured by `TrainConfig` (`deepsynth/training/config.py`): a YAML file under",
        "`ray_jobs/configs/` plus `key=value` overrides on the command line, e.g.",
        "`python -m ray_jobs.train --config ray_jobs/configs/lora_ocr2.yaml lr=1e-4 max_steps=500`.",
        "An unknown key, a wrong type or an invalid value fails before anything starts and names the key.",
    ]
    section = None
    for field in field_docs(cls):
        if field.section != section:
            section = field.section
            out += ["", f"## {section.capitalize()}", "", "| key | type | default | description |", "| --- | --- | --- | --- |"]
        default = "`" + _cell(repr(field.default)) + "`"
        out.append(f"| `{field.name}` | `{_cell(field.type)}` | {default} | {_cell(field.doc)} |")
    return "\n".join(out) + "\n"
