"""docs/configuration.md is generated from TrainConfig and must not drift from it."""

import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from deepsynth.training.config import TrainConfig
from deepsynth.training.config_reference import config_reference, field_docs

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_is_up_to_date():
    assert DOC.read_text() == config_reference(), (
        "docs/configuration.md is out of date with TrainConfig; run `deepsynth config-reference --out docs/configuration.md`")


def test_every_field_is_listed_once_with_its_type_default_and_docstring():
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \| `([^`]*)` \| (.+) \|$", DOC.read_text(), re.MULTILINE)
    fields = dataclasses.fields(TrainConfig)
    assert [name for name, *_ in rows] == [f.name for f in fields]
    for (name, type_, default, description), field in zip(rows, fields):
        assert default.replace("\\|", "|") == repr(field.default), name
        assert type_.replace("\\|", "|") == field.type, name
        assert description.strip(), f"TrainConfig.{name} needs an attribute docstring"


@dataclass
class _Example:
    # --- first part ---
    alpha: int = 1
    """The alpha | with a pipe."""
    beta: str | None = None

    # --- second part ---
    gamma: float = 0.5
    """Gamma,
    over two lines."""


def test_sections_docstrings_and_missing_docs_are_read_from_the_source():
    docs = field_docs(_Example)
    assert [(d.name, d.section, d.doc) for d in docs] == [
        ("alpha", "first part", "The alpha | with a pipe."),
        ("beta", "first part", ""),
        ("gamma", "second part", "Gamma,\nover two lines."),
    ]
    text = config_reference(_Example)
    assert "## First part" in text and "## Second part" in text
    assert "| `alpha` | `int` | `1` | The alpha \\| with a pipe. |" in text
    assert "| `gamma` | `float` | `0.5` | Gamma, over two lines. |" in text


def test_the_command_named_in_the_doc_writes_it(tmp_path):
    out = tmp_path / "configuration.md"
    deepsynth = str(Path(sys.executable).parent / "deepsynth")
    result = subprocess.run([deepsynth, "config-reference", "--out", str(out)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == config_reference()
