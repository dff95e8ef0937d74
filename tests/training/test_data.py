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


def rendered_rows(n=2):
    import numpy as np

    from deepsynth.data.corpus import generate_corpus
    from deepsynth.data.pages import render_batch

    docs = generate_corpus("train", n)
    batch = {key: np.array([d[key] for d in docs], dtype=object) for key in ("id", "text", "summary")}
    return render_batch(batch, layout="ocr2-page")


def test_training_pages_are_augmented_reproducibly_and_validation_pages_are_not():
    import numpy as np

    from deepsynth.data.augment import AugmentConfig
    from deepsynth.data.pages import decode_pages
    from deepsynth.training.data import PageOptions, to_examples

    rows = rendered_rows()
    plain = decode_pages(rows["pages"][0])[0]
    train = PageOptions("ocr2-page", 4, augment=AugmentConfig(jpeg_prob=0.0, blur_prob=0.0))
    first = to_examples(rows, train, seed=0, epoch=0)[0]["pages"][0]
    again = to_examples(rows, train, seed=0, epoch=0)[0]["pages"][0]
    other_epoch = to_examples(rows, train, seed=0, epoch=1)[0]["pages"][0]
    assert np.array_equal(np.asarray(first), np.asarray(again)), "same seed and epoch, same pixels after a resume"
    assert not np.array_equal(np.asarray(first), np.asarray(plain))
    assert not np.array_equal(np.asarray(first), np.asarray(other_epoch))
    validation = to_examples(rows, PageOptions("ocr2-page", 4), seed=0, epoch=0)[0]["pages"][0]
    assert np.array_equal(np.asarray(validation), np.asarray(plain))


def test_blank_pages_ablation_keeps_size_and_removes_the_text():
    import numpy as np

    from deepsynth.training.data import PageOptions, to_examples

    example = to_examples(rendered_rows(1), PageOptions("ocr2-page", 4, blank_pages=True), seed=0, epoch=0)[0]
    (page,) = example["pages"]
    assert page.size == (768, 768) and np.asarray(page).min() == 255
    assert example["summary"]
