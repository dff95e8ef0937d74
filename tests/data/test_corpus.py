import pytest

from deepsynth.data.corpus import SPLITS, TOPICS, TRENDS, generate_corpus, generate_document


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
    subjects = {t.subject: t for t in TOPICS}
    for doc in generate_corpus("train", 50):
        topic = subjects[doc["topic"]]
        assert doc["summary"] == f"{topic.subject} {doc['trend']}."
        body = doc["text"].lower()
        assert sum(body.count(noun) for noun in topic.nouns) >= 10, "the topic fills the page"
        own = sum(body.count(f" {verb}") for verb in TRENDS[doc["trend"]])
        other = sum(body.count(f" {verb}") for verb in TRENDS["fell" if doc["trend"] == "rose" else "rose"])
        assert own > 10 and other == 0, "the trend is stated throughout and never contradicted"


def test_all_topics_and_trends_occur():
    docs = generate_corpus("train", 400)
    assert {d["topic"] for d in docs} == {t.subject for t in TOPICS}
    assert {d["trend"] for d in docs} == set(TRENDS)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="split"):
        generate_document("dev", 0)
    with pytest.raises(ValueError, match="num_sentences"):
        generate_document("train", 0, num_sentences=0)
