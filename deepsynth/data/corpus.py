"""The built-in, offline document corpus: the default dataset.

Each document is a regional statistics bulletin: one line per region, each reporting how a
sector's figures moved. Lines alternate between two forms: sector first ("Rail traffic in the
eastern region slipped 3.0 percent.") and trend first ("Fell 2.1 percent: rail traffic in
inland towns."). One of ten sectors is covered, and its figures either rose or fell everywhere.
The reference summary is a headline naming exactly those two facts ("Rail traffic fell");
neither is in the prompt, so a model can only write the summary by reading the page.

Why bulletins rather than prose: a tiny random-initialised vision tower can only tell pages
apart by how they look in bulk, and a tiny decoder learns fastest from what starts a line. In a
bulletin both facts start lines, so each forms a column at the left margin; a linear probe on
the tiny model's frozen features reads both perfectly on held-out pages, and the tiny decoder
learns both in a few minutes. A fact further along the line (a verb after the sector, or the
sector after "Fell:") is read at chance by the same decoder in that time. Real checkpoints read
any layout.

The corpus is a pure function of (split, index, seed), so every machine generates the same
documents, and the splits never share a document.

    docs = generate_corpus("train", num_documents=200, seed=0)
    docs[0] == {"id": "train-00000", "text": "...", "summary": "Rail traffic fell", ...}
"""

from __future__ import annotations

import random

SPLITS = ("train", "validation", "test")

TOPICS: tuple[str, ...] = (
    "Energy costs",
    "Health spending",
    "Farm output",
    "Rail traffic",
    "Steel production",
    "Tourism revenue",
    "Software sales",
    "Housing prices",
    "Fishing catches",
    "School funding",
)

TRENDS: dict[str, tuple[str, ...]] = {
    "rose": ("rose", "grew", "climbed", "expanded", "surged", "improved", "gained"),
    "fell": ("fell", "shrank", "dropped", "declined", "slumped", "weakened", "slipped"),
}

_REGIONS = ("northern", "southern", "eastern", "western", "central", "coastal", "inland", "mountain")
_SECTOR_LINES = (
    "{topic} in the {region} region {verb} {value} percent.",
    "{topic} in {region} towns {verb} {value} percent.",
    "{topic} in the {region} districts {verb} by {value} percent.",
)
_TREND_LINES = (
    "{trend} {value} percent: {sector} in the {region} region.",
    "{trend} {value} percent: {sector} in {region} towns.",
    "{trend} by {value} percent: {sector} in the {region} districts.",
)


def generate_document(split: str, index: int, seed: int = 0, num_lines: int = 28) -> dict:
    """Generate document `index` of `split`: a dict with `id`, `text`, `summary`, `topic` and `trend`."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; the built-in corpus has {list(SPLITS)}.")
    if num_lines < 1:
        raise ValueError(f"num_lines must be at least 1, got {num_lines}.")
    # A string seed keeps documents independent of generation order and distinct across splits.
    rng = random.Random(f"deepsynth-corpus/{seed}/{split}/{index}")
    topic = rng.choice(TOPICS)
    trend = rng.choice(sorted(TRENDS))
    lines = [
        rng.choice(_SECTOR_LINES if number % 2 == 0 else _TREND_LINES).format(
            topic=topic,
            sector=topic.lower(),
            trend=trend.capitalize(),
            region=rng.choice(_REGIONS),
            verb=rng.choice(TRENDS[trend]),
            value=f"{rng.randint(1, 9)}.{rng.randint(0, 9)}",
        )
        for number in range(num_lines)
    ]
    return {
        "id": f"{split}-{index:05d}",
        "text": f"Regional bulletin no. {rng.randint(100, 999)}\n" + "\n".join(lines),
        "summary": f"{topic} {trend}",
        "topic": topic,
        "trend": trend,
    }


def generate_corpus(split: str, num_documents: int, seed: int = 0, num_lines: int = 28) -> list[dict]:
    """Generate the first `num_documents` documents of `split`."""
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}.")
    return [generate_document(split, i, seed, num_lines) for i in range(num_documents)]
