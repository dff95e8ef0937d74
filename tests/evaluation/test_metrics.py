import pytest
from rouge_score import rouge_scorer

from deepsynth.evaluation.metrics import has_repetition_loop, mean_words, repetition_rate, rouge_scores

PAIRS = [
    ("Rail traffic fell sharply", "Rail traffic fell"),
    ("Energy costs rose", "Energy costs rose"),
    ("Housing prices climbed in towns", "Housing prices rose"),
]


def test_rouge_equals_rouge_score_on_the_same_pairs():
    predictions, references = zip(*PAIRS)
    ours = rouge_scores(list(predictions), list(references))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    theirs = [scorer.score(ref, pred) for pred, ref in PAIRS]
    for kind in ("rouge1", "rouge2", "rougeL"):
        assert ours[kind] == pytest.approx(sum(s[kind].fmeasure for s in theirs) / len(PAIRS), abs=1e-12)
    assert ours["rouge1"] < 1.0 and rouge_scores(["Energy costs rose"], ["Energy costs rose"])["rouge1"] == 1.0


@pytest.mark.parametrize(
    "text,loops",
    [
        ("costs rose costs rose costs rose", True),
        ("the the the", True),
        ("a b c d a b c d a b c d and then", True),
        ("Rail traffic fell in the north and rail traffic fell in the south", False),
        ("costs rose costs rose", False),
        ("", False),
    ],
)
def test_repetition_loop_detection(text, loops):
    assert has_repetition_loop(text) is loops


def test_rates_and_lengths():
    assert repetition_rate(["a a a", "b c d", "x y x y x y", "z"]) == 0.5
    assert mean_words(["one two", "three"]) == 1.5
    with pytest.raises(ValueError, match="as many predictions"):
        rouge_scores(["a"], [])
