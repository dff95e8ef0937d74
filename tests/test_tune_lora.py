"""A LoRA-rank sweep on Ray Tune over Ray Train, on the tiny model: 3 ranks x 1 lr, 2 trials at a time."""

import csv
from pathlib import Path

import pytest
import yaml
from fresh_checkout import FreshCheckout

from deepsynth.training.sweep import SweepConfig
from ray_jobs import tune_lora


@pytest.mark.slow  # a real 3-trial sweep, about 1.5 minutes; the sweep's config, table and trial records are tested without it
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


def test_concurrency_leaves_each_trial_a_cpu_for_its_page_rendering():
    from deepsynth.training.config import TrainConfig

    gpu = TrainConfig(num_workers=4, use_gpu=True)
    assert tune_lora.concurrent_trials(gpu, 8, {"GPU": 8.0, "CPU": 64.0}) == 2
    assert tune_lora.concurrent_trials(gpu, 1, {"GPU": 8.0, "CPU": 64.0}) == 1
    # 2 x 2 CPUs for the workers, 1 for rendering, 0.1 for the trial: 5.1 CPUs a trial.
    assert tune_lora.concurrent_trials(TrainConfig(num_workers=2, cpus_per_worker=2), 8, {"CPU": 10.0}) == 1
    assert tune_lora.concurrent_trials(TrainConfig(num_workers=2, cpus_per_worker=2), 8, {"CPU": 10.2}) == 2
    # The deadlock seen on a 3-CPU embedded cluster: two 1-worker trials fit only if no task renders pages.
    assert tune_lora.concurrent_trials(TrainConfig(num_workers=1), 2, {"CPU": 3.0}) == 1
    with pytest.raises(ValueError, match="cannot hold one trial"):
        tune_lora.concurrent_trials(gpu, 8, {"GPU": 2.0, "CPU": 64.0})
    with pytest.raises(ValueError, match="cannot hold one trial"):
        tune_lora.concurrent_trials(gpu, 8, {"CPU": 64.0})
    with pytest.raises(ValueError, match=r"2 workers x 1 CPUs .* 3.1 CPUs in all\. Lower num_workers"):
        tune_lora.concurrent_trials(TrainConfig(num_workers=2), 8, {"CPU": 3.0})


def test_a_sweep_on_a_cluster_too_small_for_one_trial_exits_at_once_saying_what_to_change(
    ray_cluster, tiny_model_dir, tmp_path
):
    sweep = yaml.safe_load(Path("ray_jobs/configs/sweep_cpu.yaml").read_text())
    sweep["overrides"].update(storage_path=str(tmp_path), model=str(tiny_model_dir), build_tiny_model=False,
                              num_workers=16)  # the session cluster has 6 CPUs
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(sweep))
    with pytest.raises(SystemExit) as exited:
        tune_lora.main(["--config", str(config)])
    message = str(exited.value.code)
    assert message.startswith("tune_lora: error: The cluster (0 GPUs, 6 CPUs) cannot hold one trial")
    assert "Lower num_workers or cpus_per_worker in the sweep's overrides" in message
    assert not (tmp_path / "cpu-rank-sweep").exists(), "no trial was started"


def test_sweep_config_lists_every_combination_with_stable_names():
    sweep = SweepConfig(sweep_name="s", base_config="x.yaml", ranks=[4, 8], lrs=[1e-4, 3e-4],
                        target_sets=[["q_proj"], "all"])
    trials = sweep.trials()
    assert len(trials) == 8 and len({t["run_name"] for t in trials}) == 8
    assert trials == sweep.trials(), "names and order are stable, so a re-run finds the same trials"
    assert {t["lora_alpha"] for t in trials if t["lora_rank"] == 8} == {16}
    assert {str(t["lora_targets"]) for t in trials} == {"['q_proj']", "all"}
    assert all(t["run_name"].endswith(("-tq_proj", "-tall")) for t in trials)


@pytest.mark.slow  # about 4 minutes on 2 busy cores: an embedded cluster, 3 trials, ROUGE of each
def test_the_shipped_cpu_sweep_finishes_on_the_embedded_cluster_the_readme_command_starts(tmp_path):
    """The README's command, verbatim, in a fresh checkout: no fixture cluster, no RAY_ADDRESS."""
    checkout = FreshCheckout.create(tmp_path)
    log = tmp_path / "sweep.log"
    try:
        code = checkout.shell("python -m ray_jobs.tune_lora --config ray_jobs/configs/sweep_cpu.yaml", log, 1200)
        sessions = list((checkout.ray_tmp / "ray").glob("session_2*/logs/raylet.out"))
    finally:
        checkout.stop_processes()
    assert code == 0, log.read_text()[-5000:]
    assert len(sessions) == 1, "the sweep started one cluster of its own"
    rows = list(csv.DictReader((checkout.root / ".deepsynth/runs/cpu-rank-sweep/results.csv").open()))
    assert sorted(int(r["rank"]) for r in rows) == [4, 8, 16]
    assert all(r["status"] in ("done", "stopped early") for r in rows), rows
    assert any(r["status"] == "done" and r["checkpoint"] for r in rows)
    checkout.remove_ray_tmp()
