import inspect
import json
import logging
import re
from functools import partial

import datasets
import pandas as pd
import pytest

from deepsynth.data.corpus import SPLITS, TRENDS
from deepsynth.data.datasets import PRESETS, load_records

# What the Hub really serves, written out independently of PRESETS so a wrong preset fails:
# repository, config, text column, summary column, id column, and the other columns.
HUB_FACTS = {
    "cnn_dailymail": ("abisee/cnn_dailymail", "3.0.0", "article", "highlights", "id", ()),
    "xsum": ("EdinburghNLP/xsum", None, "document", "summary", "id", ()),
    "arxiv": ("ccdv/arxiv-summarization", None, "article", "abstract", None, ()),
    "billsum": ("FiscalNote/billsum", None, "text", "summary", None, ("title",)),
    "mlsum": ("reciTAL/mlsum", "de", "text", "summary", None, ("topic", "url", "title", "date")),
}
HUB_SPLITS = {name: {s: s for s in SPLITS} for name in HUB_FACTS}
HUB_SPLITS["billsum"]["validation"] = "ca_test"

_LOAD_DATASET_SIGNATURE = inspect.signature(datasets.load_dataset)


def fake_load_dataset(columns: dict[str, list], calls: list[dict]):
    """A stand-in for `datasets.load_dataset` that records each call as the real one would bind it."""

    def load_dataset(*args, **kwargs):
        calls.append(dict(_LOAD_DATASET_SIGNATURE.bind(*args, **kwargs).arguments))
        return datasets.Dataset.from_dict(columns)

    return load_dataset


def hub_rows(column_names: list[str], num_rows: int) -> dict[str, list]:
    return {column: [f"{column} {i}" for i in range(num_rows)] for column in column_names}


def test_hub_facts_cover_every_preset():
    assert set(HUB_FACTS) == set(PRESETS)


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", sorted(HUB_FACTS))
def test_preset_requests_the_hub_dataset_and_maps_its_fields(name, split):
    hub_id, config, text_column, summary_column, id_column, other_columns = HUB_FACTS[name]
    columns = [c for c in (text_column, summary_column, id_column) if c] + list(other_columns)
    calls = []

    records = load_records(name, split, load_dataset=fake_load_dataset(hub_rows(columns, 3), calls))

    assert calls == [{"path": hub_id, "name": config, "split": HUB_SPLITS[name][split]}]
    assert records == [
        {
            "id": f"{id_column} {i}" if id_column else f"{split}-{i:05d}",
            "text": f"{text_column} {i}",
            "summary": f"{summary_column} {i}",
        }
        for i in range(3)
    ]


def test_billsum_validation_reads_the_california_test_split():
    calls = []
    load_records("billsum", "validation", load_dataset=fake_load_dataset(hub_rows(["text", "summary"], 1), calls))
    assert calls[0]["split"] == "ca_test"


def test_field_arguments_override_a_preset():
    calls = []
    rows = {"article": ["a"], "highlights": ["h"], "lead": ["l"], "id": ["x"]}
    records = load_records(
        "cnn_dailymail", "train", summary_field="lead", load_dataset=fake_load_dataset(rows, calls)
    )
    assert records == [{"id": "x", "text": "a", "summary": "l"}]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_file_loads_with_a_custom_field_mapping(tmp_path, suffix):
    frame = pd.DataFrame(
        {
            "doc_id": [101, 102, 103],
            "article": ["First article body.", "Second article body.", "Third article body."],
            "highlights": ["First.", "Second.", "Third."],
        }
    )
    path = tmp_path / f"news{suffix}"
    if suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    # The real loader, with its cache kept inside the test's folder.
    real_loader = partial(datasets.load_dataset, cache_dir=str(tmp_path / "hf-cache"))

    records = load_records(
        str(path),
        "validation",
        text_field="article",
        summary_field="highlights",
        id_field="doc_id",
        load_dataset=real_loader,
    )

    assert records == [
        {"id": "101", "text": "First article body.", "summary": "First."},
        {"id": "102", "text": "Second article body.", "summary": "Second."},
        {"id": "103", "text": "Third article body.", "summary": "Third."},
    ]


def test_local_file_default_fields_number_rows_and_skip_empty_ones(tmp_path, caplog):
    path = tmp_path / "docs.jsonl"
    rows = [
        {"text": "kept zero", "summary": "s0"},
        {"text": "no summary", "summary": ""},
        {"text": "   ", "summary": "blank text"},
        {"text": "kept three", "summary": "s3"},
        {"text": "whitespace summary", "summary": " \n"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    real_loader = partial(datasets.load_dataset, cache_dir=str(tmp_path / "hf-cache"))

    with caplog.at_level(logging.WARNING, logger="deepsynth.data.datasets"):
        records = load_records(str(path), "test", load_dataset=real_loader)

    # Ids number the source rows, so they stay stable when rows are skipped.
    assert records == [
        {"id": "test-00000", "text": "kept zero", "summary": "s0"},
        {"id": "test-00003", "text": "kept three", "summary": "s3"},
    ]
    assert "Skipped 3 rows" in caplog.text


def test_limit_counts_returned_records_and_skips_empty_summaries():
    rows = {"text": [f"text {i}" for i in range(10)], "summary": ["", "s1", "", "s3", "s4", "s5", "", "", "", ""]}
    records = load_records("billsum", "train", limit=3, load_dataset=fake_load_dataset(rows, []))
    assert [r["summary"] for r in records] == ["s1", "s3", "s4"]
    assert load_records("billsum", "train", limit=0, load_dataset=fake_load_dataset(rows, [])) == []


@pytest.mark.parametrize(
    ("overrides", "missing", "flag"),
    [({}, "text", "text_field="), ({"text_field": "article"}, "summary", "summary_field=")],
)
def test_missing_field_names_the_field_the_columns_and_the_flag(tmp_path, overrides, missing, flag):
    path = tmp_path / "news.csv"
    pd.DataFrame({"article": ["body"], "highlights": ["short"]}).to_csv(path, index=False)
    real_loader = partial(datasets.load_dataset, cache_dir=str(tmp_path / "hf-cache"))

    with pytest.raises(ValueError) as info:
        load_records(str(path), load_dataset=real_loader, **overrides)

    message = str(info.value)
    assert f"{missing!r}" in message
    assert "'article'" in message and "'highlights'" in message
    assert flag in message
    assert str(path) in message


def test_missing_preset_field_says_which_flag_to_set():
    rows = {"article": ["a"], "summary": ["s"]}
    with pytest.raises(ValueError, match=r"'abstract'.*\['article', 'summary'\].*summary_field="):
        load_records("arxiv", load_dataset=fake_load_dataset(rows, []))


@pytest.mark.parametrize("source", ["wikihow", "notes.txt", "data/news.xlsx"])
def test_unknown_source_lists_what_is_accepted(source):
    with pytest.raises(ValueError) as info:
        load_records(source, load_dataset=fake_load_dataset({}, []))
    message = str(info.value)
    assert source in message
    assert "builtin" in message
    for name in PRESETS:
        assert name in message
    for suffix in (".jsonl", ".json", ".csv", ".parquet"):
        assert suffix in message


def test_missing_local_file_names_the_path(tmp_path):
    path = tmp_path / "absent.parquet"
    with pytest.raises(FileNotFoundError, match="absent.parquet"):
        load_records(str(path), load_dataset=fake_load_dataset({}, []))


@pytest.mark.parametrize("source", ["builtin", "xsum"])
def test_unknown_split_names_the_valid_splits(source):
    with pytest.raises(ValueError, match=r"'dev'.*'train', 'validation', 'test'"):
        load_records(source, "dev", load_dataset=fake_load_dataset({}, []))


def test_unreachable_hub_raises_with_the_way_out():
    error = ConnectionError("Couldn't reach 'abisee/cnn_dailymail' on the Hub (LocalEntryNotFoundError)")

    def offline_load_dataset(*args, **kwargs):
        raise error

    with pytest.raises(RuntimeError) as info:
        load_records("cnn_dailymail", load_dataset=offline_load_dataset)

    message = str(info.value)
    assert "network access" in message
    assert "local" in message
    assert "'builtin'" in message
    assert info.value.__cause__ is error


def test_builtin_is_deterministic_per_seed():
    first = load_records("builtin", "train", limit=8, seed=1)
    assert first == load_records("builtin", "train", limit=8, seed=1)
    assert [r["text"] for r in first] != [r["text"] for r in load_records("builtin", "train", limit=8, seed=2)]
    assert all(set(record) == {"id", "text", "summary"} for record in first)


def test_builtin_default_sizes_and_disjoint_splits():
    by_split = {split: load_records("builtin", split) for split in SPLITS}
    assert {split: len(records) for split, records in by_split.items()} == {
        "train": 256,
        "validation": 64,
        "test": 64,
    }
    texts = {split: {r["text"] for r in records} for split, records in by_split.items()}
    ids = {split: {r["id"] for r in records} for split, records in by_split.items()}
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not texts[a] & texts[b]
        assert not ids[a] & ids[b]


def test_builtin_summary_is_read_from_the_text():
    for record in load_records("builtin", "validation", limit=32, seed=3):
        subject, trend = re.fullmatch(r"(.+) (rose|fell)", record["summary"]).groups()
        other = "fell" if trend == "rose" else "rose"
        assert subject in record["text"]
        assert any(re.search(rf"\b{verb}\b", record["text"]) for verb in TRENDS[trend])
        assert not any(re.search(rf"\b{verb}\b", record["text"]) for verb in TRENDS[other])


def test_builtin_rejects_field_overrides():
    with pytest.raises(ValueError, match="text_field="):
        load_records("builtin", text_field="article")
