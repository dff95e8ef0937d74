"""The long-document policy: what happens to a document with more pages than `max_pages`.

Real corpora hold long documents (a CNN/DailyMail article over about 18.5k characters needs more
than three A4 pages), and one of them must not end a 3000-step run. The decision is made from
page counts before anything is rendered, so it is the same on every worker and every retry:

- `skip` (the training and preparation default): the document is left out;
- `truncate` (the evaluation default, so every test document is scored): its first `max_pages`
  pages are kept;
- `error`: the run stops, naming the document.

Every skipped and truncated document is counted; training logs the counts with its metrics,
preparation writes them in the manifest, evaluation in its report.

    kept, counts = apply_long_document_policy(records, page_counts(records, "ocr2-a4"), max_pages=3, policy="skip")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

LONG_DOCUMENT_POLICIES = ("skip", "truncate", "error")


@dataclass(frozen=True)
class LongDocumentCounts:
    """What the policy did to one set of documents."""

    policy: str
    max_pages: int
    documents: int
    """Documents the policy looked at."""
    skipped: int = 0
    truncated: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def check_policy(policy: str, flag: str = "long_documents") -> None:
    if policy not in LONG_DOCUMENT_POLICIES:
        raise ValueError(f"{flag} must be one of {list(LONG_DOCUMENT_POLICIES)}, got {policy!r}.")


def apply_long_document_policy(
    records: list[dict], num_pages: list[int], *, max_pages: int, policy: str
) -> tuple[list[dict], LongDocumentCounts]:
    """The records to use (in order) and the counts; `num_pages[i]` is the page count of `records[i]`."""
    check_policy(policy)
    if len(records) != len(num_pages):
        raise ValueError(f"{len(records)} records but {len(num_pages)} page counts.")
    long = [i for i, pages in enumerate(num_pages) if pages > max_pages]
    if long and policy == "error":
        first = long[0]
        raise ValueError(
            f"Document {records[first].get('id', first)!r} needs {num_pages[first]} pages, more than "
            f"max_pages={max_pages} ({len(long)} of {len(records)} documents are that long). Set "
            "long_documents=skip or long_documents=truncate, raise max_pages, or use a layout with a smaller font."
        )
    if policy == "skip":
        dropped = set(long)
        kept = [record for i, record in enumerate(records) if i not in dropped]
        return kept, LongDocumentCounts(policy, max_pages, len(records), skipped=len(long))
    return list(records), LongDocumentCounts(policy, max_pages, len(records),
                                             truncated=len(long) if policy == "truncate" else 0)
