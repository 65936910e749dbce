import numpy as np
import pytest

pytest.importorskip("recbole", reason="the optional `recbole` extra is not installed")

from model.data import Case, views
from model.recbole_peer import RecBoleSASRec
from model.vocab import ItemVocab

TRAIN = [views(["a", "b", "c", "d"]), views(["e", "f", "g", "h"])] * 40
VOCAB = ItemVocab.from_sequences(s.items for s in TRAIN)


def test_recbole_sasrec_learns_a_fixed_order_and_ranks_every_item():
    scorer = RecBoleSASRec(epochs=30, max_length=5, hidden_size=16, layers=1, heads=1, dropout=0.0)
    scorer.fit(TRAIN, VOCAB)
    cases = [
        Case(("a", "b"), ("view",) * 2, "c"),
        Case(("e", "f", "g"), ("view",) * 3, "h"),
        Case(("unknown",), ("view",), "a"),
    ]
    scores = scorer.score(cases)
    assert scores.shape == (3, len(VOCAB))
    assert scores.dtype == np.float32
    assert np.isfinite(scores).all()
    assert [VOCAB.item_ids[i] for i in scores[:2].argmax(axis=1)] == ["c", "h"]
