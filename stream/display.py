"""Recommendation messages as text a person wants to read (the demo and `bundlecast tail`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape

from model.artifacts import resolve_version


@dataclass(frozen=True)
class Catalog:
    """Item names and prices from a model artifact's catalogue (empty: ids are shown as they are)."""

    names: dict[str, str] = field(default_factory=dict)
    prices: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, model_dir: Path | None) -> Catalog:
        if model_dir is None:
            return cls()
        import pandas as pd

        from model.data import item_names

        path = resolve_version(model_dir) / "catalog.parquet"
        if not path.is_file():
            return cls()
        frame = pd.read_parquet(path)
        ids = frame["item_id"].astype(str)
        prices = frame["price"] if "price" in frame else pd.Series(float("nan"), index=frame.index)
        return cls(
            names=item_names(frame),
            prices={item: float(p) for item, p in zip(ids, prices, strict=True) if p == p},
        )

    def name(self, item_id: str) -> str:
        name = self.names.get(item_id)
        return f"{escape(name)} [dim]({escape(item_id)})[/]" if name else escape(item_id)

    def price(self, item_ids: list[str]) -> str:
        """The items' total price, or '' when any price is unknown."""
        if not item_ids or any(item not in self.prices for item in item_ids):
            return ""
        return f" [green]{sum(self.prices[item] for item in item_ids):.2f}[/]"


def format_answer(message: dict, catalog: Catalog, top: int = 3) -> str:
    """A few lines of rich markup: who, for which event, the top items and the bundles, each with its why."""
    lines = [
        f"[bold]{escape(message['user_id'])}[/] [dim]event {escape(message['event_id'])} · model "
        f"{escape(message['model_version'])} · {message['latency_ms']:.1f} ms[/]"
    ]
    for rank, item in enumerate(message["items"][:top], start=1):
        why = _why(item["reasons"]["code"], item["explanation"])
        lines.append(f"  {rank}. {catalog.name(item['item_id'])}{catalog.price([item['item_id']])}{why}")
    for bundle in message["bundles"]:
        members = " + ".join(catalog.name(item) for item in bundle["items"])
        why = _why(bundle["reasons"]["code"], bundle["explanation"])
        lines.append(f"  [magenta]bundle[/] {members}{catalog.price(bundle['items'])}{why}")
    return "\n".join(lines)


def _why(code: str, explanation: str) -> str:
    return f"\n       [cyan]{escape(code)}[/] [italic]{escape(explanation)}[/]"
