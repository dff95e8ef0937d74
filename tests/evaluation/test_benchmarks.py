from deepsynth.data.datasets import PRESETS
from deepsynth.evaluation.benchmarks import BENCHMARKS


def test_presets_name_real_datasets_and_their_published_scores():
    assert BENCHMARKS["cnn_dailymail"].reference_rouge["rouge1"] == 44.16
    assert BENCHMARKS["xsum"].reference_rouge["rouge1"] == 47.21
    for name, benchmark in BENCHMARKS.items():
        assert benchmark.dataset == "builtin" or benchmark.dataset in PRESETS, name
        if benchmark.reference_rouge:
            assert set(benchmark.reference_rouge) == {"rouge1", "rouge2", "rougeL"}
            assert benchmark.reference_model and benchmark.source
