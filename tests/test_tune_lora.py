"""A LoRA-rank sweep on Ray Tune over Ray Train, on the tiny model: 3 ranks x 1 lr, 2 trials at a time."""

import csv
from pathlib import Path

import yaml

from deepsynth.training.sweep import SweepConfig
from ray_jobs import tune_lora


def test_rank_sweep_finishes_with_a_table_and_a_best_checkpoint_then_reports_it_again(
    ray_cluster, tiny_model_dir, tmp_path
):
    sweep = yaml.safe_load(Path("ray_jobs/configs/sweep_cpu.yaml").read_text())
    sweep["overrides"].update(storage_path=str(tmp_path), model=str(tiny_model_dir), build_tiny_model=False,
                              max_steps=2, eval_every=2, log_every=1)
    sweep["rouge_documents"] = 2
    sweep["grace_period"] = 3  # ASHA's only rung is the last step, so every trial finishes and is scored
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep))

    first = tune_lora.main(["--config", str(config)])
    rows = list(csv.DictReader(Path(first["results_csv"]).open()))
    assert sorted(int(r["rank"]) for r in rows) == [4, 8, 16]
    assert all(r["status"] == "done" and r["val_loss"] and r["rouge_l"] for r in rows)
    by_rank = {int(r["rank"]): int(r["trainable_parameters"]) for r in rows}
    assert by_rank[4] < by_rank[8] < by_rank[16], "trainable parameters grow with the rank"
    assert all(int(r["alpha"]) == 2 * int(r["rank"]) for r in rows)
    best = first["best"]
    assert best["val_loss"] == min(float(r["val_loss"]) for r in rows)
    assert (Path(best["checkpoint"]) / "adapter" / "adapter_model.safetensors").exists()

    logs = sorted(tmp_path.glob("cpu-rank-sweep-r*/logs/metrics.jsonl"))
    sizes = [log.stat().st_size for log in logs]
    again = tune_lora.main(["--config", str(config)])
    assert again["best"]["checkpoint"] == best["checkpoint"]
    assert [log.stat().st_size for log in logs] == sizes, "the finished sweep was reported, not trained again"


def test_a_trial_cut_short_by_asha_is_listed_as_stopped_early_without_a_checkpoint():
    from ray.tune import Result

    train = {"run_name": "r4", "lora_rank": 4, "lora_alpha": 8, "lr": 3e-3, "lora_dropout": 0.0}
    cut = Result(metrics={"config": {"train": train}, "val_loss": 2.5, "step": 2}, checkpoint=None, error=None, path="")
    done = Result(metrics={"config": {"train": train}, "val_loss": 2.0, "best_val_loss": 1.9, "rouge_l": 0.2,
                           "checkpoint_path": "/ckpt"}, checkpoint=None, error=None, path="")
    failed = Result(metrics={"config": {"train": train}}, checkpoint=None, error=RuntimeError("x"), path="")
    rows = [tune_lora.trial_row(r) for r in (cut, done, failed)]
    assert [r["status"] for r in rows] == ["stopped early", "done", "error"]
    assert rows[0]["val_loss"] == 2.5 and rows[0]["checkpoint"] is None
    assert rows[1]["val_loss"] == 1.9 and rows[1]["checkpoint"] == "/ckpt"


def test_concurrency_never_asks_for_more_than_the_cluster_has():
    import pytest

    from deepsynth.training.config import TrainConfig

    gpu = TrainConfig(num_workers=4, use_gpu=True)
    assert tune_lora.concurrent_trials(gpu, 8, {"GPU": 8.0, "CPU": 64.0}) == 2
    assert tune_lora.concurrent_trials(gpu, 1, {"GPU": 8.0, "CPU": 64.0}) == 1
    assert tune_lora.concurrent_trials(TrainConfig(num_workers=2, cpus_per_worker=2), 8, {"CPU": 10.0}) == 2
    with pytest.raises(ValueError, match="cannot hold one trial"):
        tune_lora.concurrent_trials(gpu, 8, {"GPU": 2.0, "CPU": 64.0})


def test_sweep_config_lists_every_combination_with_stable_names():
    sweep = SweepConfig(sweep_name="s", base_config="x.yaml", ranks=[4, 8], lrs=[1e-4, 3e-4],
                        target_sets=[["q_proj"], None])
    trials = sweep.trials()
    assert len(trials) == 8 and len({t["run_name"] for t in trials}) == 8
    assert trials == sweep.trials(), "names and order are stable, so a re-run finds the same trials"
    assert {t["lora_alpha"] for t in trials if t["lora_rank"] == 8} == {16}
