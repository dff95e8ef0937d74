"""Summary metrics: ROUGE (from `rouge-score`), lengths and repetition loops.

ROUGE-1/2/L are F1 scores with Porter stemming, as the summarization literature reports them,
averaged over documents. A *repetition loop* is what OCR-family decoders fall into: the same
run of words repeated back to back, e.g. "costs rose costs rose costs rose". The repetition
rate is the share of outputs with such a loop.

    scores = rouge_scores(predictions, references)    # {"rouge1": 0.41, "rouge2": 0.18, "rougeL": 0.37}
    rate = repetition_rate(predictions)
"""

from __future__ import annotations

from statistics import mean

from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"Need as many predictions as references (and at least one): {len(predictions)} vs {len(references)}.")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(reference, prediction) for prediction, reference in zip(predictions, references)]
    return {kind: mean(score[kind].fmeasure for score in scores) for kind in ROUGE_TYPES}


def has_repetition_loop(text: str, max_period: int = 8, repeats: int = 3) -> bool:
    """True if some run of 1..max_period words occurs `repeats` times back to back."""
    words = text.split()
    for period in range(1, max_period + 1):
        for start in range(len(words) - period * repeats + 1):
            run = words[start : start + period]
            if all(words[start + k * period : start + (k + 1) * period] == run for k in range(1, repeats)):
                return True
    return False


def repetition_rate(texts: list[str]) -> float:
    return sum(has_repetition_loop(text) for text in texts) / len(texts) if texts else 0.0


def mean_words(texts: list[str]) -> float:
    return mean(len(text.split()) for text in texts) if texts else 0.0
