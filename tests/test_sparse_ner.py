"""scripts/make_sparse_ner.py: the sparse-entity NER set of the defaults report, built from CoNLL-2003."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO, SHARED_DATA

CONLL = SHARED_DATA / "conll2003"
spec = importlib.util.spec_from_file_location("make_sparse_ner", REPO / "scripts" / "make_sparse_ner.py")
make_sparse_ner = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_sparse_ner)


@pytest.mark.skipif(not CONLL.is_dir(), reason="../shared/data/conll2003 is not here")
def test_sparse_set_keeps_the_types_and_reaches_the_share():
    original = make_sparse_ner.sentences(CONLL / "valid.txt")
    rows = make_sparse_ner.sparse(original, {"PER", "LOC"}, 1 / 15)
    tags = [r[-1] for s in rows for r in s]
    assert {t[2:] for t in tags if t != "O"} == {"PER", "LOC"}
    assert 1 / 15 - 0.002 < sum(t != "O" for t in tags) / len(tags) <= 1 / 15  # CoNLL's own: about 1 in 6
    texts = {" ".join(r[0] for r in s) for s in original}
    assert all(" ".join(r[0] for r in s) in texts for s in rows)  # whole sentences of the file, none made up
    assert len(rows) > len(original) * 0.6  # the entity-free sentences all stay
    assert rows == make_sparse_ner.sparse(original, {"PER", "LOC"}, 1 / 15)  # deterministic


def test_other_types_become_o_and_sentences_without_entities_stay():
    rows = [[["Paris", "NNP", "B-NP", "B-LOC"], ["Acme", "NNP", "I-NP", "B-ORG"]], [["hello", "UH", "O", "O"]]]
    kept = make_sparse_ner.sparse(rows, {"LOC"}, 1.0)
    assert kept == [[["Paris", "NNP", "B-NP", "B-LOC"], ["Acme", "NNP", "I-NP", "O"]], [["hello", "UH", "O", "O"]]]
    assert make_sparse_ner.sparse(rows, {"LOC"}, 0.0) == [[["hello", "UH", "O", "O"]]]
