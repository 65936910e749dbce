"""The Recommender API over a real trained artifact: loading, ids, fallbacks, exclusion, batching."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from model import Recommender
from model.answers import Query
from model.artifacts import LATEST, new_version, resolve_version
from model.data import Dataset, load_online_retail
from model.recommender import RecommenderScorer
from model.sasrec.model import SASRecConfig, SASRecEnsemble
from model.sasrec.train import TrainConfig, train_artifact
from tests.conftest import ONLINE_RETAIL_SAMPLE


@pytest.fixture(scope="module")
def rec(artifact_root: Path) -> Recommender:
    return Recommender.load(artifact_root)


@pytest.fixture(scope="module")
def history(online_retail_sample: Dataset) -> list[str]:
    return list(online_retail_sample.train[0].items[-5:])


def test_load_resolves_latest_and_version_dir_alike(artifact_root: Path, rec: Recommender) -> None:
    version_dir = resolve_version(artifact_root)
    assert rec.version == version_dir.name
    assert Recommender.load(version_dir).version == rec.version
    assert rec.catalog is not None and {"item_id", "description", "price"} <= set(rec.catalog.columns)


def test_recommend_returns_k_known_items_best_first(rec: Recommender, history: list[str]) -> None:
    answer = rec.recommend(history, k=10)
    assert len(answer) == 10
    assert all(item in rec.vocab for item, _ in answer)
    scores = [score for _, score in answer]
    assert scores == sorted(scores, reverse=True)


def test_search_is_exact_top_k_of_the_full_model_score(
    rec: Recommender, online_retail_sample: Dataset
) -> None:
    """FAISS inner product + repeat bonus of session items, merged, equals brute force over all items."""
    histories = [list(session.items[-12:]) for session in online_retail_sample.train[:20]]
    sessions = rec.encode(histories)
    brute = sessions.scores(rec.item_vectors)
    for row, answer in enumerate(rec.search(sessions, k=15)):
        expected = np.sort(brute[row])[::-1][:15]
        np.testing.assert_allclose([score for _, score in answer], expected, rtol=1e-4, atol=1e-4)
        for item, score in answer:
            assert score == pytest.approx(float(brute[row, rec.vocab.get(item)]), abs=1e-4)


def test_items_already_seen_get_a_repeat_bonus(rec: Recommender, history: list[str]) -> None:
    sessions = rec.encode([history])
    seen = {rec.vocab.get(item) for item in history}
    assert set(sessions.repeats[0]) == seen
    assert all(bonus > 0 for bonus in sessions.repeats[0].values())


def test_unknown_ids_are_ignored(rec: Recommender, history: list[str]) -> None:
    noisy = ["NO-SUCH-ITEM", *history, "ANOTHER-UNKNOWN"]
    assert rec.recommend(noisy, k=10) == rec.recommend(history, k=10)


def test_empty_or_unknown_history_falls_back_to_popularity(rec: Recommender) -> None:
    popular = rec.popular(10)
    assert rec.recommend([], k=10) == popular
    assert rec.recommend(["NO-SUCH-ITEM"], k=10) == popular
    counts = [rec.popularity[rec.vocab.get(item)] for item, _ in popular]
    assert counts == sorted(counts, reverse=True)


def test_excluded_items_never_appear(rec: Recommender, history: list[str]) -> None:
    top = [item for item, _ in rec.recommend(history, k=10)]
    answer = rec.recommend(history, k=10, exclude=set(top[:5]))
    assert len(answer) == 10
    assert not {item for item, _ in answer} & set(top[:5])
    assert not {item for item, _ in rec.recommend([], k=10, exclude=set(top))} & set(top)


def test_session_items_can_be_recommended_again(rec: Recommender, online_retail_sample: Dataset) -> None:
    """Repeat behaviour: nothing but an explicit exclusion removes the user's own items."""
    histories = [list(session.items[-10:]) for session in online_retail_sample.train[:50]]
    answers = rec.recommend_batch(histories, k=50)
    assert any(
        set(history) & {item for item, _ in answer}
        for history, answer in zip(histories, answers, strict=True)
    )


def test_batch_equals_one_by_one(rec: Recommender, online_retail_sample: Dataset) -> None:
    histories = [list(session.items[-8:]) for session in online_retail_sample.train[:6]] + [[], ["NO-SUCH"]]
    batched = rec.recommend_batch(histories, k=5)
    for history, answer in zip(histories, batched, strict=True):
        single = rec.recommend(history, k=5)
        assert [item for item, _ in answer] == [item for item, _ in single]
        np.testing.assert_allclose([s for _, s in answer], [s for _, s in single], rtol=1e-5)


def test_the_answer_seam_ranks_like_recommend_and_explains_items_and_bundles(
    rec: Recommender, online_retail_sample: Dataset
) -> None:
    sessions = online_retail_sample.train[:4]
    queries = [
        Query(s.items[-6:], s.types[-6:], cart=s.items[-2:-1], exclude={s.items[-3]}) for s in sessions
    ] + [Query(["NO-SUCH"])]
    stages: list[str] = []

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        stages.append(name)
        yield

    answers = rec.answer_batch(queries, k=8, bundles=2, bundle_size=3, stage=timed)
    assert stages == ["model", "faiss", "bundles"]
    for query, answer in zip(queries[:-1], answers[:-1], strict=True):
        expected = rec.recommend(query.history, 8, query.excluded_items, query.types)
        assert [i.item_id for i in answer.items] == [item for item, _ in expected]
        assert all(i.explanation and i.reasons.code != "popular" for i in answer.items)
        assert 1 <= len(answer.bundles) <= 2 and not answer.cold_start
        assert all(not set(query.exclude) & set(b.items) for b in answer.bundles)
    cold = answers[-1]
    assert cold.cold_start and cold.bundles == ()
    assert [i.item_id for i in cold.items] == [item for item, _ in rec.popular(8)]
    trending = rec.vocab.item_ids[-1]
    first = rec.answer_batch(queries[-1:], k=8, trending=lambda depth: [(trending, 1.0)])[0]
    assert first.items[0].item_id == trending and first.items[0].reasons.code == "popular"


def test_scorer_ranks_the_harness_vocabulary(rec: Recommender, online_retail_sample: Dataset) -> None:
    from model.vocab import ItemVocab

    reordered = ItemVocab([*reversed(rec.vocab.item_ids), "UNSEEN-ITEM"])
    scorer = RecommenderScorer(rec, reordered)
    cases = online_retail_sample.valid[:4]
    scores = scorer.score(cases)
    assert scores.shape == (4, len(reordered))
    assert np.isneginf(scores[:, -1]).all()
    sessions = rec.encode([c.prefix for c in cases], [c.prefix_types for c in cases])
    expected = sessions.scores(rec.item_vectors)[:, rec.vocab.get(reordered.item_ids[0])]
    np.testing.assert_allclose(scores[:, 0], expected, rtol=1e-5)


def test_the_shipped_complement_model_learns_from_every_invoice(
    rec: Recommender, online_retail_sample: Dataset
) -> None:
    """Test weeks included: the session model is scored on them, the shipped complement model never is."""
    assert rec.complements is not None
    assert rec.complements.baskets.shape[0] == len(online_retail_sample.all_baskets)
    assert len(online_retail_sample.all_baskets) > len(online_retail_sample.baskets)
    last = next(basket for basket in reversed(online_retail_sample.test_baskets) if len(basket) >= 2)
    assert rec.complements.evidence(last[0], last[1])[0] >= 1


def test_a_failed_write_never_becomes_latest(tmp_path: Path) -> None:
    with new_version(tmp_path) as scratch:
        (scratch / "config.json").write_text("{}")
    published = (tmp_path / LATEST).read_text()
    with pytest.raises(RuntimeError), new_version(tmp_path) as scratch:
        raise RuntimeError("training crashed half way")
    assert (tmp_path / LATEST).read_text() == published
    assert resolve_version(tmp_path).name == published.strip()


def test_an_artifact_of_several_refit_members_serves_their_mean(tmp_path: Path) -> None:
    """`members=2` refits two seeds and publishes them as one model; search is exact over the joined rows."""
    train_artifact(
        load_online_retail(ONLINE_RETAIL_SAMPLE),
        tmp_path,
        SASRecConfig(n_items=0, max_len=10, dim=16, n_layers=1, n_heads=1, dropout=0.1),
        TrainConfig(epochs=1, batch_size=64, negatives=256, threads=1, members=2),
        refit_on=load_online_retail(ONLINE_RETAIL_SAMPLE, valid_weeks=0),
    )
    rec = Recommender.load(tmp_path)
    assert isinstance(rec.model, SASRecEnsemble) and len(rec.model.members) == 2
    assert rec.item_vectors.shape == (len(rec.vocab), 32) and rec.index.spec.dim == 32
    report = json.loads((rec.version_dir / "metrics.json").read_text())
    assert [refit["train_config"]["seed"] for refit in report["refit"]] == [0, 1]

    histories = [list(case.prefix[-6:]) for case in load_online_retail(ONLINE_RETAIL_SAMPLE).test[:10]]
    sessions = rec.encode(histories)
    member_scores = []
    for member in rec.model.members:
        single = Recommender(
            rec.version_dir,
            member,
            rec.vocab,
            member.item_vectors().detach().numpy(),
            rec.index,
            rec.popularity,
            rec.catalog,
        )
        member_scores.append(single.encode(histories).scores(single.item_vectors))
    brute = sessions.scores(rec.item_vectors)
    np.testing.assert_allclose(brute, sum(member_scores) / 2, rtol=1e-4, atol=1e-4)
    for row, answer in enumerate(rec.search(sessions, k=10)):
        np.testing.assert_allclose(
            [score for _, score in answer], np.sort(brute[row])[::-1][:10], rtol=1e-4, atol=1e-4
        )
    bundles = rec.bundles(histories[0], n=2, size=3)  # explanations run the ensemble's leave-one-out too
    assert bundles and all(len(bundle.items) == 3 and bundle.explanation for bundle in bundles)
