"""The training input pipeline: records → Ray Data rendering → one worker's shard → batches.

Each epoch the records are shuffled with the run's seed and dealt out round-robin, so worker
`rank` of `world_size` always sees the same documents in the same order. That makes two things
exact: resuming at any step (the position is a count of micro-batches, and the remaining
records of the epoch are re-dealt from it) and comparing 1 worker with batch 2b against 2
workers with batch b (step s covers the same documents).

Rendering is the model-agnostic `render_batch` step (or, for a prepared dataset, reading the
pages rendered ahead with `read_prepared_pages`), run as Ray Data tasks on the cluster and
prefetched while the model trains; decoding, augmentation and collation (which knows the
model's tokens) run in the training worker. The loop times how long it waits for each batch.

    batches = PageBatches(records, rank=0, world_size=2, batch_size=4, seed=0, layout="ocr2-page",
                          collate=SummaryCollator(family), start_micro_batch=resume_position)
    for batch in batches: ...
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Iterator

import ray
import torch.distributed as dist
from PIL import Image

from deepsynth.data.augment import AugmentConfig, augment_pages
from deepsynth.data.collate import Batch, SummaryCollator
from deepsynth.data.long_documents import LongDocumentCounts, apply_long_document_policy
from deepsynth.data.pages import decode_pages, page_counts, render_batch
from deepsynth.data.prepared import read_prepared_pages


def batches_per_epoch(num_records: int, world_size: int, batch_size: int) -> int:
    """Micro-batches each worker takes per epoch; the remainder of the shuffle is dropped so all workers agree."""
    return num_records // (world_size * batch_size)


def epoch_shard(records: list[dict], epoch: int, seed: int, rank: int, world_size: int) -> list[dict]:
    order = list(range(len(records)))
    random.Random(f"deepsynth-shuffle/{seed}/{epoch}").shuffle(order)
    return [records[i] for i in order[rank::world_size]]


@dataclass
class PageOptions:
    """How records become page images in training."""

    layout: str
    max_pages: int
    augment: AugmentConfig | None = None
    """Augmentation for training pages; None for validation."""
    blank_pages: bool = False
    """Replace pages by blank ones of the same size (the ablation that shows what pages are worth)."""
    truncate: bool = False
    """Keep the first `max_pages` pages of longer documents (long_documents=truncate) instead of raising."""


def select_documents(records: list[dict], options: PageOptions, policy: str) -> tuple[list[dict], LongDocumentCounts]:
    """The records every worker uses under the long-document `policy`, decided from page counts before rendering.

    Rank 0 counts (with Ray Data tasks) and broadcasts, so all ranks deal the same records and
    agree on the number of batches per epoch.
    """
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    counts = [page_counts(records, options.layout) if not distributed or dist.get_rank() == 0 else None]
    if distributed:
        dist.broadcast_object_list(counts, src=0)
    return apply_long_document_policy(records, counts[0], max_pages=options.max_pages, policy=policy)


def to_examples(rows: dict, options: PageOptions, seed: int, epoch: int) -> list[dict]:
    """Rendered Ray Data rows → collator examples."""
    examples = []
    for doc_id, pages_png, summary in zip(rows["id"], rows["pages"], rows["summary"]):
        pages = decode_pages(pages_png)
        if options.truncate:
            pages = pages[: options.max_pages]  # prepared pages come whole; rendered ones are already cut
        if options.blank_pages:
            pages = [Image.new("RGB", page.size, "white") for page in pages]
        if options.augment is not None:
            # Seeded by document and epoch: the same page looks the same after a resume.
            pages = augment_pages(pages, options.augment, seed=zlib.crc32(f"{seed}/{epoch}/{doc_id}".encode()))
        examples.append({"pages": pages, "summary": str(summary)})
    return examples


def render(records: list[dict], options: PageOptions, batch_size: int) -> ray.data.Dataset:
    if records and "shard" in records[0]:  # a prepared dataset: its pages were rendered ahead
        return ray.data.from_items(records).map_batches(read_prepared_pages, batch_size=batch_size)
    return ray.data.from_items(records).map_batches(
        render_batch, fn_kwargs={"layout": options.layout, "max_pages": options.max_pages,
                                 "truncate": options.truncate}, batch_size=batch_size
    )


class PageBatches:
    """An endless iterator of collated micro-batches for one worker, starting at a given position."""

    def __init__(
        self,
        records: list[dict],
        *,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int,
        options: PageOptions,
        collate: SummaryCollator,
        start_micro_batch: int = 0,
        prefetch_batches: int = 2,
    ):
        self.per_epoch = batches_per_epoch(len(records), world_size, batch_size)
        if self.per_epoch < 1:
            raise ValueError(
                f"{len(records)} training documents cannot fill one batch of {batch_size} on each of "
                f"{world_size} workers; use more documents or a smaller batch_size."
            )
        self.records, self.rank, self.world_size = records, rank, world_size
        self.batch_size, self.seed, self.options, self.collate = batch_size, seed, options, collate
        self.position = start_micro_batch
        self.prefetch_batches = prefetch_batches
        context = ray.data.DataContext.get_current()
        # Ray Data may otherwise hand blocks back in completion order; exact resume needs the dealt order.
        context.execution_options.preserve_order = True
        # One bar per epoch and worker would bury the loop's own progress lines.
        context.enable_progress_bars = False

    @property
    def epoch(self) -> int:
        return self.position // self.per_epoch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            epoch, offset = divmod(self.position, self.per_epoch)
            shard = epoch_shard(self.records, epoch, self.seed, self.rank, self.world_size)
            remaining = shard[offset * self.batch_size : self.per_epoch * self.batch_size]
            rows = render(remaining, self.options, self.batch_size).iter_batches(
                batch_size=self.batch_size, batch_format="numpy", prefetch_batches=self.prefetch_batches
            )
            for batch_rows in rows:
                examples = to_examples(batch_rows, self.options, self.seed, epoch)
                self.position += 1
                yield self.collate(examples)


@dataclass
class ValidationBatch:
    batch: Batch
    padding: bool
    """Run only to keep the ranks in step; its loss does not count."""


def validation_batches(
    records: list[dict], *, rank: int, world_size: int, batch_size: int, options: PageOptions, collate: SummaryCollator
) -> list[ValidationBatch]:
    """This worker's share of the validation set, rendered and collated once, reused at every evaluation.

    Every rank gets as many batches as the largest share needs: under DDP (buffer broadcasts) and
    ZeRO-3 (parameter gathers) a rank that ran fewer forward passes would leave the others waiting
    forever. A rank short of batches pads with one-document batches of a real document, marked so
    the loss leaves them out.
    """
    if not records:
        return []
    num_batches = math.ceil(math.ceil(len(records) / world_size) / batch_size)
    shard = records[rank::world_size]
    batches = []
    if shard:
        rows = render(shard, options, batch_size).iter_batches(batch_size=batch_size, batch_format="numpy")
        batches = [ValidationBatch(collate(to_examples(batch_rows, options, seed=0, epoch=0)), padding=False)
                   for batch_rows in rows]
    if len(batches) < num_batches:
        rows = next(iter(render(records[:1], options, 1).iter_batches(batch_size=1, batch_format="numpy")))
        filler = ValidationBatch(collate(to_examples(rows, options, seed=0, epoch=0)), padding=True)
        batches += [filler] * (num_batches - len(batches))
    return batches
