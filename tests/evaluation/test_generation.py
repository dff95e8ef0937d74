import json

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from deepsynth.evaluation.generation import GenerationOptions, generate_summaries
from deepsynth.evaluation.metrics import has_repetition_loop, repetition_rate, rouge_scores
from deepsynth.training.checkpoint import save_checkpoint, trained_state_dict
from deepsynth.training.config import TrainConfig
from deepsynth.training.modes import prepare_trainable
from ray_jobs import evaluate


class InjectLoop(LogitsProcessor):
    """Pushes the model into a two-token loop: after `a` say `b`, otherwise say `a`."""

    def __init__(self, a: int, b: int):
        self.a, self.b = a, b

    def __call__(self, input_ids, scores):
        boost = torch.zeros_like(scores)
        follow = torch.where(input_ids[:, -1] == self.a, self.b, self.a)
        boost[torch.arange(scores.shape[0]), follow] = 50.0
        return scores + boost


def test_the_repetition_guard_removes_an_injected_loop(tiny, corpus_examples):
    model, processor, _ = tiny
    tokenizer = processor.tokenizer
    a, b = (tokenizer.encode(word, add_special_tokens=False)[0] for word in (" costs", " rose"))
    documents = [example["pages"] for example in corpus_examples[:2]]
    loop = LogitsProcessorList([InjectLoop(a, b)])
    unguarded = GenerationOptions(max_new_tokens=12, no_repeat_ngram_size=0, repetition_penalty=1.0)
    looping = generate_summaries(model, processor, documents, options=unguarded, logits_processor=loop)
    guarded = generate_summaries(model, processor, documents, options=GenerationOptions(max_new_tokens=12),
                                 logits_processor=loop)
    assert repetition_rate(looping) == 1.0, looping
    assert repetition_rate(guarded) == 0.0, guarded
    assert not any(has_repetition_loop(text) for text in guarded)


def test_batched_generation_matches_one_at_a_time(tiny, corpus_examples):
    model, processor, _ = tiny
    documents = [example["pages"] for example in corpus_examples[:3]]
    options = GenerationOptions(max_new_tokens=6)
    batched = generate_summaries(model, processor, documents, options=options, batch_size=3)
    single = [generate_summaries(model, processor, [doc], options=options)[0] for doc in documents]
    assert batched == single
    assert processor.tokenizer.padding_side == "right", "the tokenizer is left as it was"


def test_generation_options_are_validated():
    with pytest.raises(ValueError, match="num_beams"):
        GenerationOptions(num_beams=0)
    with pytest.raises(ValueError, match="repetition_penalty"):
        GenerationOptions(repetition_penalty=0.5)


def test_evaluate_writes_a_report_next_to_the_checkpoint(tiny, tiny_model_dir, tmp_path):
    model, processor, family = tiny
    model, _ = prepare_trainable(model, family, "lora", rank=4, alpha=8, dropout=0.0)
    config = TrainConfig(model=str(tiny_model_dir), mode="lora")
    checkpoint = save_checkpoint(
        tmp_path, 5, model=model, processor=processor, config=config, family_name=family.name,
        metrics={}, weights=trained_state_dict(model))

    result = evaluate.main(["--checkpoint", str(checkpoint), "--limit", "20", "--max-new-tokens", "8",
                            "--batch-size", "10"])
    report = json.loads((checkpoint / "eval-builtin-test.json").read_text())
    assert report["documents"] == 20 and result["path"].endswith("eval-builtin-test.json")
    for key in ("prediction_words", "reference_words", "compression_ratio", "repetition_rate"):
        assert key in report
    assert report["reference_words"] == 3 and report["compression_ratio"] > 1
    rows = [json.loads(line) for line in (checkpoint / "eval-builtin-test.predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    assert report["rouge"] == rouge_scores([r["prediction"] for r in rows], [r["reference"] for r in rows])


def test_evaluation_through_ray_data_replicas_matches_in_process(ray_cluster, lora_checkpoint, tmp_path):
    args = ["--checkpoint", str(lora_checkpoint), "--benchmark", "builtin", "--limit", "8", "--max-new-tokens", "6",
            "--batch-size", "4"]
    local = evaluate.main([*args, "--out", str(tmp_path / "local.json")])
    distributed = evaluate.main([*args, "--out", str(tmp_path / "ray.json"), "--ray-data", "--concurrency", "2"])
    assert distributed["rouge"] == local["rouge"]
    assert distributed["compression_ratio"] == local["compression_ratio"]
    read = lambda name: (tmp_path / name).read_text()  # noqa: E731
    assert read("ray.predictions.jsonl") == read("local.predictions.jsonl")


def test_deepsynth_eval_is_the_same_command(lora_checkpoint, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    deepsynth = str(Path(sys.executable).parent / "deepsynth")
    result = subprocess.run([deepsynth, "eval", "--checkpoint", str(lora_checkpoint), "--limit", "4",
                             "--max-new-tokens", "4", "--out", str(tmp_path / "cli.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "cli.json").read_text())["documents"] == 4
    assert "rouge1" in result.stdout


def test_evaluation_runs_in_the_checkpoints_bf16(lora_checkpoint):
    from deepsynth.training.checkpoint import load_source

    model = load_source(lora_checkpoint, None).model  # dtype="auto": what the tiny model, like the real one, stores
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_evaluation_uses_the_checkpoints_template_and_counts_long_documents(a4_checkpoint, tmp_path):
    from deepsynth.data.corpus import generate_corpus
    from deepsynth.data.render import LAYOUTS, count_pages

    short, long = generate_corpus("test", 2)
    long = {**long, "text": "\n".join([long["text"]] * 12)}
    assert count_pages(long["text"], LAYOUTS["ocr2-a4"]) > 2  # the checkpoint's max_pages
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d["text"], "summary": d["summary"]}) + "\n" for d in (short, long)))
    common = ["--checkpoint", str(a4_checkpoint), "--dataset", str(data), "--max-new-tokens", "4"]

    report = evaluate.main([*common, "--out", str(tmp_path / "trained.json")])
    assert report["template"] == {"layout": "ocr2-a4", "max_pages": 2, "prompt": "Write the headline."}
    assert report["long_documents"] == {"policy": "truncate", "max_pages": 2, "documents": 2, "skipped": 0,
                                        "truncated": 1}
    a4_tokens = 144 + 1 + 6 * 144  # the tiny model's 768 px global view and six 768 px tiles
    assert report["visual_tokens_per_document"] == (1 + 2) * a4_tokens / 2

    skipped = evaluate.main([*common, "--long-documents", "skip", "--layout", "ocr2-page",
                             "--prompt", "Summarize the document.", "--out", str(tmp_path / "page.json")])
    assert skipped["template"]["layout"] == "ocr2-page" and skipped["template"]["prompt"] == "Summarize the document."
    assert skipped["documents"] == 1 and skipped["long_documents"]["skipped"] == 1
    assert skipped["visual_tokens_per_document"] == 145
