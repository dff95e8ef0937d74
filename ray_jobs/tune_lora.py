"""Sweep LoRA ranks (and alpha, learning rate, dropout, target modules) with Ray Tune over Ray Train.

    python -m ray_jobs.tune_lora --config ray_jobs/configs/sweep_cpu.yaml
    ray job submit --working-dir . -- python -m ray_jobs.tune_lora --config ray_jobs/configs/sweep_ocr2.yaml

Each trial is a `TorchTrainer` run of the same training loop as `ray_jobs.train`, reporting to
Tune as it goes; ASHA stops trials whose val loss lags. After training, a trial scores its best
checkpoint's ROUGE-L on a few validation documents. Trials are named after their parameters,
so running the same command again continues an interrupted sweep, or just reports a finished
one. The results table (CSV next to the sweep, and printed) lists rank, trainable parameters,
val loss, ROUGE-L, samples/s and peak memory, and the best trial's checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from deepsynth.data.datasets import load_records
from deepsynth.data.render import get_layout, render_pages
from deepsynth.evaluation.generation import generate_summaries
from deepsynth.evaluation.metrics import rouge_scores
from deepsynth.model.tiny import build_tiny_model
from deepsynth.training.checkpoint import load_checkpoint
from deepsynth.training.config import TrainConfig, config_from_dict, load_config
from deepsynth.training.sweep import load_sweep
from deepsynth.logs import configure_logging, logger
from ray_jobs.train import DATA_TASK_CPUS, build_trainer, check_lora_targets, resolve_paths, run_cpus, start_ray


# A trial only drives its Ray Train run, so it holds a sliver of a CPU; the workers hold the rest.
TRIAL_CPUS = 0.1


def trial_cpus(base: TrainConfig) -> float:
    """Logical CPUs one trial holds at once: its driver, its train workers and one page-rendering task.

    Of the two ways to keep Ray Data's render tasks from waiting forever behind the workers (count
    them here, or give them a fractional or zero CPU request), this follows Ray's guidance for Ray
    Data under Tune: leave CPUs free by limiting concurrent trials. A render task then holds a real
    CPU while it runs, as in a plain training run, so the input pipeline behaves the same under Tune;
    a zero-CPU request would let Ray start render tasks without bound on cores the workers use.
    """
    return TRIAL_CPUS + run_cpus(base)


def concurrent_trials(base: TrainConfig, requested: int, resources: dict[str, float]) -> int:
    """As many trials as the cluster's GPUs and CPUs can hold at once, at most `requested`."""
    needed = trial_cpus(base)
    capacity = int(resources.get("CPU", 0) // needed)
    if base.use_gpu:
        capacity = min(capacity, int(resources.get("GPU", 0) // base.num_workers))
    if capacity < 1:
        raise ValueError(
            f"The cluster ({resources.get('GPU', 0):g} GPUs, {resources.get('CPU', 0):g} CPUs) cannot hold one trial: "
            f"{base.num_workers} workers x {base.cpus_per_worker:g} CPUs (cpus_per_worker)"
            f"{' and 1 GPU each' if base.use_gpu else ''}, plus {DATA_TASK_CPUS:g} CPU for its page rendering and "
            f"{TRIAL_CPUS:g} for the trial, {needed:g} CPUs in all. Lower num_workers or cpus_per_worker in the "
            "sweep's overrides, or add CPUs (and GPUs) to the cluster."
        )
    return min(requested, capacity)


def run_trial(params: dict) -> None:
    """One Tune trial: a Ray Train run, then ROUGE-L of its best checkpoint."""
    config = config_from_dict(dict(params["train"]))
    result = build_trainer(config, callbacks=[TuneReportCallback()]).fit()
    ranked = sorted(result.best_checkpoints, key=lambda pair: pair[1]["val_loss"])
    best_path, best_metrics = ranked[0][0].path, ranked[0][1]

    records = load_records(config.dataset, "validation", params["rouge_documents"], seed=config.seed,
                           text_field=config.text_field, summary_field=config.summary_field)
    model, processor, _, template = load_checkpoint(best_path)  # the base model's dtype: bf16 for the real one
    documents = [render_pages(r["text"], get_layout(template.layout), template.max_pages, truncate=True)
                 for r in records]
    predictions = generate_summaries(model, processor, documents, prompt=template.prompt,
                                     options=replace(template.generation, max_new_tokens=32))
    rouge_l = rouge_scores(predictions, [r["summary"] for r in records])["rougeL"]
    tune.report({**best_metrics, "best_val_loss": best_metrics["val_loss"], "rouge_l": rouge_l,
                 "checkpoint_path": best_path, "step": config.max_steps + 1})


def trial_row(result: tune.Result) -> dict:
    """One line of the results table. A trial ASHA cut short has a val loss but no ROUGE-L or checkpoint."""
    metrics = result.metrics or {}
    train = result.config["train"]
    if result.error:
        status = "error"
    elif "rouge_l" in metrics:
        status = "done"
    else:
        status = "stopped early"
    return {
        "run": train["run_name"], "rank": train["lora_rank"], "alpha": train["lora_alpha"], "lr": train["lr"],
        "dropout": train["lora_dropout"], "trainable_parameters": metrics.get("trainable_parameters"),
        "val_loss": metrics.get("best_val_loss", metrics.get("val_loss")), "rouge_l": metrics.get("rouge_l"),
        "samples_per_s": metrics.get("samples_per_s"), "peak_memory_mb": metrics.get("peak_memory_mb"),
        "checkpoint": metrics.get("checkpoint_path"), "status": status,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a sweep YAML, e.g. ray_jobs/configs/sweep_cpu.yaml")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.config)
        base = resolve_paths(load_config(sweep.base_config, [f"{k}={json.dumps(v)}" for k, v in sweep.overrides.items()]))
        trials = [config_from_dict({**asdict(base), **trial}) for trial in sweep.trials()]
        # Built first: on a fresh clone the LoRA targets can only be checked against the built model.
        if base.build_tiny_model and not (Path(base.model) / "config.json").exists():
            build_tiny_model(base.model)
        for trial in trials:
            check_lora_targets(trial)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"tune_lora: error: {err}")

    # An embedded cluster holds the trials the sweep asks for at once; an explicit one holds what it holds.
    start_ray(sweep.max_concurrent_trials * trial_cpus(base), base.log_format)
    configure_logging(base.log_format, run_name=sweep.sweep_name)
    try:
        concurrency = concurrent_trials(base, sweep.max_concurrent_trials, ray.cluster_resources())
    except ValueError as err:
        sys.exit(f"tune_lora: error: {err}")
    path = f"{base.storage_path}/{sweep.sweep_name}"
    trainable = tune.with_resources(run_trial, {"cpu": TRIAL_CPUS})
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"train": tune.grid_search([asdict(t) for t in trials]),
                         "rouge_documents": sweep.rouge_documents},
            tune_config=tune.TuneConfig(
                scheduler=ASHAScheduler(metric="val_loss", mode="min", time_attr="step", max_t=base.max_steps + 1,
                                        grace_period=sweep.grace_period),
                max_concurrent_trials=concurrency,
                trial_dirname_creator=lambda trial: trial.config["train"]["run_name"],
            ),
            run_config=tune.RunConfig(name=sweep.sweep_name, storage_path=base.storage_path),
        )
    results = tuner.fit()

    rows = [trial_row(result) for result in results]
    finished = [r for r in rows if r["val_loss"] is not None and r["checkpoint"]]
    best = min(finished, key=lambda r: r["val_loss"]) if finished else None
    table = Path(path) / "results.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    logger.info(f"\n{'rank':>5} {'alpha':>6} {'lr':>9} {'trainable':>10} {'val_loss':>9} {'rougeL':>7} {'samples/s':>10} {'peak MB':>8}  status")
    for r in sorted(rows, key=lambda r: r["rank"]):
        logger.info(f"{r['rank']:>5} {r['alpha']:>6} {r['lr']:>9.2e} {r['trainable_parameters'] or 0:>10} "
                    f"{r['val_loss'] or float('nan'):>9.4f} {r['rouge_l'] or 0:>7.3f} {r['samples_per_s'] or 0:>10.2f} "
                    f"{r['peak_memory_mb'] or 0:>8.0f}  {r['status']}")
    logger.info(f"Results: {table}\nBest: {best['run'] if best else None} -> {best['checkpoint'] if best else None}")
    summary = {"sweep": sweep.sweep_name, "results_csv": str(table), "trials": rows, "best": best}
    logger.info(json.dumps(summary, default=str))
    return summary


if __name__ == "__main__":
    main()
