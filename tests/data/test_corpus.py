import re

import pytest

from deepsynth.data.corpus import SPLITS, TOPICS, TRENDS, generate_corpus, generate_document
from deepsynth.data.render import LAYOUTS, render_pages


def test_same_seed_same_documents_other_seed_other_documents():
    assert generate_corpus("train", 20, seed=3) == generate_corpus("train", 20, seed=3)
    assert generate_corpus("train", 20, seed=3) != generate_corpus("train", 20, seed=4)


def test_documents_do_not_depend_on_how_many_are_generated():
    assert generate_corpus("validation", 5) == generate_corpus("validation", 50)[:5]


def test_splits_share_no_document_text():
    texts = {split: {d["text"] for d in generate_corpus(split, 100)} for split in SPLITS}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]


def test_the_summary_is_determined_by_what_the_document_says():
    for doc in generate_corpus("train", 50):
        assert doc["summary"] == f"{doc['topic']} {doc['trend']}"
        lines = doc["text"].splitlines()[1:]
        # Both facts start lines, alternately, so each forms a column at the left margin.
        assert all(line.startswith(doc["topic"]) for line in lines[::2]), "the sector starts every other line"
        assert all(line.startswith(doc["trend"].capitalize()) for line in lines[1::2]), "the trend the others"
        assert all(doc["topic"].lower() in line.lower() for line in lines), "every line names the sector"
        other = "fell" if doc["trend"] == "rose" else "rose"
        text = doc["text"].lower()
        assert all(any(re.search(rf"\b{v}\b", line.lower()) for v in TRENDS[doc["trend"]]) for line in lines)
        assert not any(re.search(rf"\b{v}\b", text) for v in TRENDS[other]), "never contradicted"
        assert not any(t.lower() in text for t in TOPICS if t != doc["topic"])


def test_a_document_fills_one_page_of_the_default_layout():
    doc = generate_document("train", 0)
    assert len(render_pages(doc["text"], LAYOUTS["ocr2-page"])) == 1
    assert len(render_pages(generate_document("train", 0, num_lines=100)["text"], LAYOUTS["ocr2-page"])) == 4


def test_all_topics_and_trends_occur():
    docs = generate_corpus("train", 400)
    assert {d["topic"] for d in docs} == set(TOPICS)
    assert {d["trend"] for d in docs} == set(TRENDS)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="split"):
        generate_document("dev", 0)
    with pytest.raises(ValueError, match="num_lines"):
        generate_document("train", 0, num_lines=0)
