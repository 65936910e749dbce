"""Train on a slice of real data (the bundled RetailRocket sample) and beat popularity, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from model import Recommender
from model.baselines import Popularity
from model.data import SAMPLES_DIR, load_dataset
from model.evaluate import Prefitted, evaluate
from model.recommender import RecommenderScorer
from model.sasrec.model import SASRecConfig
from model.sasrec.train import TrainConfig, train_artifact
from model.vocab import ItemVocab


@pytest.mark.slow
def test_trained_model_beats_popularity_on_real_sessions(tmp_path: Path) -> None:
    sample = SAMPLES_DIR / "retailrocket_sample"
    split = load_dataset("retailrocket-sessions", sample)
    full = load_dataset("retailrocket-sessions", sample, holdout_validation=False)
    train_artifact(
        split,
        tmp_path,
        SASRecConfig(n_items=0, max_len=20, dim=32, n_layers=1, n_heads=2, dropout=0.2),
        TrainConfig(epochs=4, batch_size=256, negatives=1024, patience=1, threads=1),
        refit_on=full,
    )
    vocab = ItemVocab.from_sequences(session.items for session in full.train)
    model = Prefitted(RecommenderScorer(Recommender.load(tmp_path), vocab))
    popularity, sasrec = evaluate([Popularity(), model], full.train, full.test, vocab, progress=False)
    assert sasrec.metrics["HR@20"] > 2 * popularity.metrics["HR@20"]
    assert sasrec.metrics["MRR@20"] > 2 * popularity.metrics["MRR@20"]
    assert sasrec.metrics["HR@20"] > 0.2
