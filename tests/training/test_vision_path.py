"""The pages must matter: the same run on blank pages must end clearly worse (a `slow` test, ~5 min)."""

import pytest

from ray_jobs import train


@pytest.mark.slow
def test_real_pages_beat_blank_pages_by_0_3_nats(ray_cluster, tiny_model_dir, tmp_path):
    common = ["--config", "ray_jobs/configs/cpu_smoke.yaml", f"storage_path={tmp_path}", f"model={tiny_model_dir}",
              "build_tiny_model=false", "mode=full", "num_workers=1", "batch_size=8", "lr=3e-3", "warmup_steps=10",
              "max_steps=500", "eval_every=100", "log_every=50", "train_limit=256", "val_limit=32"]
    pages = train.main([*common, "run_name=pages"])
    blank = train.main([*common, "run_name=blank", "blank_pages=true"])
    pages_loss, blank_loss = pages["metrics"]["val_loss"], blank["metrics"]["val_loss"]
    assert pages_loss <= blank_loss - 0.3, f"pages {pages_loss:.3f} vs blank {blank_loss:.3f}"
