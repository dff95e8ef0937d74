"""The built-in, offline document corpus: the default dataset.

Each document is a short business report about one of ten topics whose figures either rose
or fell. The text is dense with the topic's vocabulary and the direction of the trend, and
the reference summary names exactly those two facts ("Energy costs rose."). A model can only
write the right summary by reading the page: the topic and the trend are never in the prompt.

The corpus is a pure function of (split, index, seed), so every machine generates the same
documents, and the splits never share a document.

    docs = generate_corpus("train", num_documents=200, seed=0)
    docs[0] == {"id": "train-00000", "text": "...", "summary": "Energy costs rose."}
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Topic:
    subject: str
    """The summary's subject, e.g. "Energy costs"."""
    nouns: tuple[str, ...]
    """Words that fill the document's sentences about this topic."""


TOPICS: tuple[Topic, ...] = (
    Topic("Energy costs", ("power", "fuel", "grid", "turbines", "pipelines", "reactors", "solar farms", "batteries")),
    Topic("Health spending", ("hospitals", "clinics", "vaccines", "patients", "nurses", "surgeons", "pharmacies")),
    Topic("Farm output", ("wheat", "harvests", "cattle", "orchards", "tractors", "dairy herds", "grain silos")),
    Topic("Rail traffic", ("trains", "freight cars", "stations", "tracks", "commuters", "locomotives", "signals")),
    Topic("Steel production", ("furnaces", "mills", "ingots", "iron ore", "smelters", "alloys", "rolling lines")),
    Topic("Tourism revenue", ("hotels", "resorts", "visitors", "beaches", "museums", "cruise ships", "tour guides")),
    Topic("Software sales", ("licenses", "apps", "developers", "servers", "subscriptions", "platforms", "cloud tools")),
    Topic("Housing prices", ("homes", "apartments", "mortgages", "builders", "tenants", "landlords", "suburbs")),
    Topic("Fishing catches", ("trawlers", "harbors", "nets", "salmon", "tuna", "fleets", "fish markets")),
    Topic("School funding", ("teachers", "classrooms", "pupils", "textbooks", "campuses", "tuition", "libraries")),
)

TRENDS: dict[str, tuple[str, ...]] = {
    "rose": ("rose", "grew", "climbed", "expanded", "surged", "improved", "gained"),
    "fell": ("fell", "shrank", "dropped", "declined", "slumped", "weakened", "slipped"),
}

_REGIONS = ("northern", "southern", "eastern", "western", "central", "coastal", "inland")
_SENTENCES = (
    "Demand for {n1} {t1} again this quarter, and {n2} {t2} with it.",
    "In the {region} region, {n1} {t1} while {n2} {t2}.",
    "Analysts said {n1} {t1} faster than expected as {n2} {t2}.",
    "Spending on {n1} {t1}, and the market for {n2} {t2} as well.",
    "Reports from {region} areas show that {n1} {t1} and {n2} {t2}.",
    "Over the year {n1} {t1}; by the end of it {n2} {t2} too.",
)
_FILLER = (
    "The figures were published by the regional statistics office.",
    "Officials expect the next survey to be released in spring.",
    "The data cover both public and private organisations.",
)


def generate_document(split: str, index: int, seed: int = 0, num_sentences: int = 24) -> dict:
    """Generate document `index` of `split`: a dict with `id`, `text`, `summary`, `topic` and `trend`."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; the built-in corpus has {list(SPLITS)}.")
    if num_sentences < 1:
        raise ValueError(f"num_sentences must be at least 1, got {num_sentences}.")
    # A string seed keeps documents independent of generation order and distinct across splits.
    rng = random.Random(f"deepsynth-corpus/{seed}/{split}/{index}")
    topic = rng.choice(TOPICS)
    trend = rng.choice(sorted(TRENDS))
    verbs = TRENDS[trend]

    sentences = []
    for _ in range(num_sentences):
        if rng.random() < 0.15:
            sentences.append(rng.choice(_FILLER))
            continue
        n1, n2 = rng.sample(topic.nouns, 2)
        sentence = rng.choice(_SENTENCES).format(
            n1=n1, n2=n2, t1=rng.choice(verbs), t2=rng.choice(verbs), region=rng.choice(_REGIONS)
        )
        sentences.append(sentence[0].upper() + sentence[1:])
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return {
        "id": f"{split}-{index:05d}",
        "text": f"{topic.subject}: annual report\n\n" + "\n\n".join(paragraphs),
        "summary": f"{topic.subject} {trend}.",
        "topic": topic.subject,
        "trend": trend,
    }


def generate_corpus(split: str, num_documents: int, seed: int = 0, num_sentences: int = 24) -> list[dict]:
    """Generate the first `num_documents` documents of `split`."""
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0, got {num_documents}.")
    return [generate_document(split, i, seed, num_sentences) for i in range(num_documents)]
