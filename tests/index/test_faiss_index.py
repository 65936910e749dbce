from pathlib import Path

import faiss
import numpy as np
import pytest

from index.faiss_index import (
    INDEX_FILE,
    SPEC_FILE,
    ItemIndex,
    gpu_available,
    overlap_at_k,
    recall_at_k,
    resolve_device,
)

DIM = 16


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def items(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((3000, DIM), dtype=np.float32)


@pytest.fixture
def queries(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((40, DIM), dtype=np.float32)


@pytest.fixture
def clustered(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Items and queries around shared centres, as trained item embeddings are."""
    centres = rng.standard_normal((50, DIM), dtype=np.float32) * 3
    items = centres[rng.integers(0, 50, 5000)] + rng.standard_normal((5000, DIM), dtype=np.float32)
    queries = centres[rng.integers(0, 50, 100)] + rng.standard_normal((100, DIM), dtype=np.float32)
    return items, queries


def brute_force_top_k(
    items: np.ndarray, queries: np.ndarray, k: int, exclude: list[set[int]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ items.T
    for row, excluded in enumerate(exclude or []):
        scores[row, list(excluded)] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def test_exact_search_equals_numpy_brute_force(items: np.ndarray, queries: np.ndarray) -> None:
    index = ItemIndex.build(items, device="cpu")
    scores, ids = index.search(queries, 10)
    expected_scores, expected_ids = brute_force_top_k(items, queries, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_exclusion_removes_ids_and_still_returns_k(items: np.ndarray, queries: np.ndarray) -> None:
    index = ItemIndex.build(items, device="cpu")
    _, unfiltered = index.search(queries, 10)
    # Each query excludes its own best 5 hits, plus ids that are not near the top at all.
    exclude = [{*map(int, top[:5]), 0, 1, 2} for top in unfiltered]
    scores, ids = index.search(queries, 10, exclude=exclude)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    for row_ids, excluded in zip(ids, exclude, strict=True):
        assert not set(row_ids.tolist()) & excluded
    expected_scores, expected_ids = brute_force_top_k(items, queries, 10, exclude)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_small_catalogue_pads_with_minus_one(rng: np.random.Generator) -> None:
    index = ItemIndex.build(rng.standard_normal((5, DIM), dtype=np.float32), device="cpu")
    query = rng.standard_normal((2, DIM), dtype=np.float32)
    scores, ids = index.search(query, 8, exclude=[{0, 1}, set(range(5))])
    assert sorted(ids[0, :3].tolist()) == [2, 3, 4]
    assert (ids[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()
    assert (ids[1] == -1).all() and np.isneginf(scores[1]).all()


@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_save_load_round_trip(kind: str, clustered: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    items, queries = clustered
    index = ItemIndex.build(items, kind, device="cpu")
    index.tune(nprobe=7, ef_search=33)
    index.save(tmp_path)
    loaded = ItemIndex.load(tmp_path, device="cpu")
    assert loaded.spec == index.spec and len(loaded) == len(items)
    exclude = [{i} for i in range(len(queries))]
    for got, expected in zip(
        loaded.search(queries, 10, exclude), index.search(queries, 10, exclude), strict=True
    ):
        np.testing.assert_array_equal(got, expected)


def test_load_rejects_missing_or_mismatched_files(items: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no saved index"):
        ItemIndex.load(tmp_path)
    ItemIndex.build(items, device="cpu").save(tmp_path)
    faiss.write_index(faiss.IndexFlatIP(DIM), str(tmp_path / INDEX_FILE))
    with pytest.raises(ValueError, match="its spec says 3000"):
        ItemIndex.load(tmp_path, device="cpu")
    (tmp_path / SPEC_FILE).write_text('{"kind": "annoy"}')
    with pytest.raises(ValueError, match="kind"):
        ItemIndex.load(tmp_path, device="cpu")


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_against_exact(kind: str, clustered: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = clustered
    exact = ItemIndex.build(items, device="cpu")
    approx = ItemIndex.build(items, kind, device="cpu")
    assert recall_at_k(approx, exact, queries, 10) > 0.9


def test_probing_fewer_lists_lowers_recall(items: np.ndarray, queries: np.ndarray) -> None:
    exact = ItemIndex.build(items, device="cpu")
    approx = ItemIndex.build(items, "ivf", nprobe=1, device="cpu")
    narrow = recall_at_k(approx, exact, queries, 10)
    approx.tune(nprobe=approx.spec.nlist)
    assert narrow < 0.9
    assert recall_at_k(approx, exact, queries, 10) == pytest.approx(1.0)


def test_overlap_counts_only_valid_true_ids() -> None:
    found = np.array([[1, 2, -1], [5, 6, 7]])
    truth = np.array([[1, 3, 4], [7, 5, -1]])
    assert overlap_at_k(found, truth) == pytest.approx((1 / 3 + 2 / 2) / 2)


def test_copy_is_independent(items: np.ndarray, queries: np.ndarray) -> None:
    index = ItemIndex.build(items, "ivf", nprobe=2, device="cpu")
    copy = index.to("cpu")
    copy.tune(nprobe=copy.spec.nlist)
    assert index.spec.nprobe == 2
    assert not np.array_equal(index.search(queries, 10)[1], copy.search(queries, 10)[1])


def test_bad_input_is_a_clear_error(items: np.ndarray, queries: np.ndarray) -> None:
    index = ItemIndex.build(items, device="cpu")
    with pytest.raises(ValueError, match="dimension 8"):
        index.search(queries[:, :8], 10)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, DIM), np.nan), 10)
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="exclude has 1 entries"):
        index.search(queries, 10, exclude=[{1}])
    with pytest.raises(ValueError, match="non-empty 2-D"):
        ItemIndex.build(np.zeros((0, DIM), dtype=np.float32))
    with pytest.raises(ValueError, match="nprobe"):
        index.tune(nprobe=0)


def test_device_env_var_forces_cpu(items: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUNDLECAST_FAISS_DEVICE", "cpu")
    assert ItemIndex.build(items).device == "cpu"
    assert resolve_device("exact") == "cpu"


def test_device_env_var_rejects_unknown_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUNDLECAST_FAISS_DEVICE", "tpu")
    with pytest.raises(ValueError, match="auto\\|cpu\\|gpu"):
        resolve_device("exact")


def test_auto_device_follows_gpu_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUNDLECAST_FAISS_DEVICE", raising=False)
    assert resolve_device("exact") == ("gpu" if gpu_available() else "cpu")
    assert resolve_device("hnsw") == "cpu"


@pytest.mark.skipif(gpu_available(), reason="a GPU is available, so asking for one is not an error")
def test_gpu_without_gpu_is_a_clear_error(items: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="no GPU support or sees no GPU"):
        ItemIndex.build(items, device="gpu")
    monkeypatch.setenv("BUNDLECAST_FAISS_DEVICE", "gpu")
    with pytest.raises(RuntimeError, match="BUNDLECAST_FAISS_DEVICE=cpu"):
        ItemIndex.build(items)


def test_thread_count_comes_from_env(items: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUNDLECAST_FAISS_THREADS", "1")
    ItemIndex.build(items, device="cpu")
    assert faiss.omp_get_max_threads() == 1


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="faiss has no GPU support or sees no GPU")
def test_gpu_path_matches_cpu(clustered: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    items, queries = clustered
    cpu_exact = ItemIndex.build(items, device="cpu")
    gpu_exact = ItemIndex.build(items, device="gpu")
    assert gpu_exact.device == "gpu"
    exclude = [{int(i)} for i in cpu_exact.search(queries, 1)[1][:, 0]]
    cpu_scores, cpu_ids = cpu_exact.search(queries, 10, exclude)
    gpu_scores, gpu_ids = gpu_exact.search(queries, 10, exclude)
    assert overlap_at_k(gpu_ids, cpu_ids) > 0.99  # float summation order may swap near-ties
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-4, atol=1e-4)

    gpu_ivf = ItemIndex.build(items, "ivf", device="gpu")
    assert gpu_ivf.device == "gpu"
    assert recall_at_k(gpu_ivf, cpu_exact, queries, 10) > 0.9
    gpu_ivf.save(tmp_path)
    reloaded = ItemIndex.load(tmp_path, device="cpu")
    assert reloaded.device == "cpu"
    assert overlap_at_k(reloaded.search(queries, 10)[1], gpu_ivf.search(queries, 10)[1]) > 0.99
    assert ItemIndex.build(items, "hnsw", device="gpu").device == "cpu"
