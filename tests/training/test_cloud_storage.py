"""A run whose storage is a URI: everything through pyarrow, as on s3:// or gs://, with a local file:// URI.

Ray Train writes the run there; the metrics log is mirrored there (the job API reads progress from
storage); evaluation and serving take a checkpoint by its URI, copied to the local cache first.
"""

import json

from deepsynth.jobs.progress import latest_metrics, list_checkpoints, read_metrics
from deepsynth.serving.config import load_serve_config
from deepsynth.training.checkpoint import load_checkpoint, local_checkpoint
from ray_jobs import evaluate, train

SMOKE = "ray_jobs/configs/cpu_smoke.yaml"


def test_progress_evaluation_and_serving_read_a_run_in_uri_storage(ray_cluster, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    storage = f"file://{tmp_path}/bucket"
    monkeypatch.setenv("DEEPSYNTH_CACHE", str(tmp_path / "cache"))
    summary = train.main(["--config", SMOKE, f"storage_path={storage}", f"model={tiny_model_dir}",
                          "build_tiny_model=false", "run_name=remote", "num_workers=1", "max_steps=2",
                          "eval_every=2", "log_every=1"])
    assert summary["status"] == "finished"
    run = f"{storage}/remote"
    # The log lives in storage, not in a temp folder of the worker's machine.
    assert (tmp_path / "bucket" / "remote" / "logs" / "metrics.jsonl").exists()
    assert [row["step"] for row in read_metrics(run) if "loss" in row] == [1, 2]
    assert latest_metrics(run)["step"] == 2
    [checkpoint] = list_checkpoints(run)
    assert checkpoint["path"] == f"{run}/step-000002"

    local = local_checkpoint(checkpoint["path"])
    assert local.is_relative_to(tmp_path / "cache") and (local / "meta.json").exists()
    assert local_checkpoint(checkpoint["path"]) == local, "a complete cached copy is reused"
    assert load_checkpoint(checkpoint["path"]).template.layout == json.loads((local / "meta.json").read_text())[
        "template"]["layout"]

    report = evaluate.main(["--checkpoint", checkpoint["path"], "--limit", "4", "--max-new-tokens", "4",
                            "--batch-size", "4"])
    assert report["documents"] == 4 and (local / "eval-builtin-test.json").exists()

    config = load_serve_config({"checkpoint": checkpoint["path"]})
    assert config.base_model() == str(tiny_model_dir)
