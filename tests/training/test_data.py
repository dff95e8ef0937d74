from deepsynth.training.data import batches_per_epoch, epoch_shard


def records(n):
    return [{"id": f"doc-{i}", "text": str(i), "summary": str(i)} for i in range(n)]


def test_workers_split_an_epoch_without_overlap():
    docs = records(17)
    shards = [epoch_shard(docs, epoch=0, seed=1, rank=r, world_size=3) for r in range(3)]
    ids = [d["id"] for shard in shards for d in shard]
    assert len(ids) == len(set(ids)) == 17


def test_epochs_reshuffle_deterministically():
    docs = records(20)
    assert epoch_shard(docs, 0, 1, 0, 1) == epoch_shard(docs, 0, 1, 0, 1)
    assert epoch_shard(docs, 0, 1, 0, 1) != epoch_shard(docs, 1, 1, 0, 1)
    assert epoch_shard(docs, 0, 1, 0, 1) != epoch_shard(docs, 0, 2, 0, 1)


def test_two_workers_step_s_covers_what_one_worker_step_s_covers():
    """Why 2 workers x batch b train like 1 worker x batch 2b: each step sees the same documents."""
    docs, b = records(32), 2
    single = epoch_shard(docs, 0, 0, 0, 1)
    pair = [epoch_shard(docs, 0, 0, r, 2) for r in range(2)]
    for step in range(batches_per_epoch(len(docs), 2, b)):
        together = {d["id"] for d in single[step * 2 * b : (step + 1) * 2 * b]}
        apart = {d["id"] for shard in pair for d in shard[step * b : (step + 1) * b]}
        assert together == apart


def test_batches_per_epoch_drops_the_remainder_for_every_worker():
    assert batches_per_epoch(17, world_size=2, batch_size=4) == 2
    assert batches_per_epoch(7, world_size=2, batch_size=4) == 0
