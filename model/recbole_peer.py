"""RecBole's SASRec (Zhao et al., 2021) as an external peer `Scorer`, trained on exactly our split.

Optional: install with the `recbole` extra (`pip install -e '.[recbole]'`; it keeps the torch pin).
Training is far too slow for RetailRocket on a small CPU (see BENCHMARKS.md); use a GPU (`device="cuda"`).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.data import Case, Session
from model.vocab import ItemVocab

SESSION_FIELD, ITEM_FIELD, TIME_FIELD = "session_id", "item_id", "timestamp"
DATASET_NAME = "bundlecast"


def _numpy2_aliases() -> None:
    """RecBole 1.2.1 re-creates aliases NumPy 2 removed (np.float = np.float_, ...): restore their sources."""
    for alias, target in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, alias):
            setattr(np, alias, target)


class RecBoleSASRec:
    """SASRec trained by RecBole's own trainer (cross-entropy over all items), scored by full ranking.

    Training sessions are written as a RecBole atomic file (one session per user id, click position as
    time), so RecBole trains on every prefix of every training session, like the other methods see them.
    """

    name = "RecBole-SASRec"

    def __init__(
        self,
        epochs: int = 10,
        max_length: int = 50,
        hidden_size: int = 64,
        layers: int = 2,
        heads: int = 2,
        dropout: float = 0.5,
        batch_size: int = 512,
        learning_rate: float = 1e-3,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        self.settings: dict[str, Any] = {
            "epochs": epochs,
            "MAX_ITEM_LIST_LENGTH": max_length,
            "hidden_size": hidden_size,
            "inner_size": 4 * hidden_size,
            "n_layers": layers,
            "n_heads": heads,
            "hidden_dropout_prob": dropout,
            "attn_dropout_prob": dropout,
            "train_batch_size": batch_size,
            "learning_rate": learning_rate,
            "device": device,
            "use_gpu": device != "cpu",
            "seed": seed,
        }
        self._model: Any = None
        self._columns = np.zeros(0, dtype=np.int64)  # our vocab index -> RecBole item id (0 = padding)
        self._vocab: ItemVocab | None = None

    def fit(self, train: Sequence[Session], vocab: ItemVocab) -> None:
        _numpy2_aliases()
        from recbole.config import Config
        from recbole.data import create_dataset
        from recbole.data.utils import create_samplers, get_dataloader
        from recbole.model.sequential_recommender import SASRec
        from recbole.trainer import Trainer
        from recbole.utils import init_seed

        with tempfile.TemporaryDirectory(prefix="recbole-") as workdir:
            _write_atomic_file(Path(workdir) / DATASET_NAME / f"{DATASET_NAME}.inter", train, vocab)
            config = Config(
                model="SASRec",
                dataset=DATASET_NAME,
                config_dict={
                    **self.settings,
                    "data_path": workdir,
                    "checkpoint_dir": workdir,
                    "USER_ID_FIELD": SESSION_FIELD,
                    "ITEM_ID_FIELD": ITEM_FIELD,
                    "TIME_FIELD": TIME_FIELD,
                    "load_col": {"inter": [SESSION_FIELD, ITEM_FIELD, TIME_FIELD]},
                    "loss_type": "CE",
                    "train_neg_sample_args": None,
                    # Every session goes to training: evaluation is ours, on our own cases.
                    "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "group_by": "user"},
                    "show_progress": True,
                },
            )
            init_seed(config["seed"], config["reproducibility"])
            dataset = create_dataset(config)
            built = dataset.build()
            train_sampler, _, _ = create_samplers(config, dataset, built)
            train_data = get_dataloader(config, "train")(config, built[0], train_sampler, shuffle=True)
            model = SASRec(config, train_data.dataset).to(config["device"])
            with contextlib.chdir(workdir):  # RecBole's trainer logs to ./log_tensorboard, wherever it runs
                Trainer(config, model).fit(train_data, valid_data=None, saved=False, show_progress=True)
        token_to_id = dataset.field2token_id[ITEM_FIELD]
        self._columns = np.array([token_to_id.get(str(index), 0) for index in range(len(vocab))])
        self._model = model.eval()
        self._vocab = vocab

    @torch.no_grad()
    def score(self, cases: Sequence[Case]) -> np.ndarray:
        if self._model is None or self._vocab is None:
            raise RuntimeError(f"fit {self.name} before scoring")
        from recbole.data.interaction import Interaction

        max_length = self.settings["MAX_ITEM_LIST_LENGTH"]
        sequences = np.zeros((len(cases), max_length), dtype=np.int64)
        lengths = np.ones(len(cases), dtype=np.int64)
        for row, case in enumerate(cases):
            items = self._columns[self._vocab.encode(case.prefix)][-max_length:]
            items = items[items > 0]
            if len(items):  # an all-unknown prefix stays one padding click: scores are still defined
                sequences[row, : len(items)] = items
                lengths[row] = len(items)
        interaction = Interaction(
            {
                self._model.ITEM_SEQ: torch.from_numpy(sequences),
                self._model.ITEM_SEQ_LEN: torch.from_numpy(lengths),
            }
        ).to(self._model.device)
        scores = self._model.full_sort_predict(interaction).cpu().numpy().astype(np.float32)
        ranked = scores[:, self._columns]
        ranked[:, self._columns == 0] = -np.inf  # items RecBole never saw cannot be recommended
        return ranked


def _write_atomic_file(path: Path, train: Sequence[Session], vocab: ItemVocab) -> None:
    """One row per click: session number, our vocab index as the item token, click position as time."""
    path.parent.mkdir(parents=True)
    with path.open("w", encoding="utf-8") as out:
        out.write(f"{SESSION_FIELD}:token\t{ITEM_FIELD}:token\t{TIME_FIELD}:float\n")
        for number, session in enumerate(train):
            for position, index in enumerate(vocab.encode(session.items)):
                out.write(f"{number}\t{index}\t{position}\n")
