"""Recommendation messages as text a person wants to read (the demo and `bundlecast tail`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rich.markup import escape

from model.artifacts import resolve_version


def load_descriptions(model_dir: Path | None) -> dict[str, str]:
    """Item descriptions from a model artifact's catalogue; empty when there is none."""
    if model_dir is None:
        return {}
    import pandas as pd

    catalog = resolve_version(model_dir) / "catalog.parquet"
    if not catalog.is_file():
        return {}
    frame = pd.read_parquet(catalog, columns=["item_id", "description"])
    return dict(zip(frame["item_id"], frame["description"].fillna(""), strict=True))


def _name(item_id: str, descriptions: Mapping[str, str]) -> str:
    description = descriptions.get(item_id)
    return f"{escape(description.title())} [dim]({escape(item_id)})[/]" if description else escape(item_id)


def format_answer(message: dict, descriptions: Mapping[str, str], top: int = 3) -> str:
    """A few lines of rich markup: who, for which event, the top items with their reasons, the bundles."""
    header = (
        f"[bold]{escape(message['user_id'])}[/] [dim]event {escape(message['event_id'])} · model "
        f"{escape(message['model_version'])} · {message['latency_ms']:.1f} ms[/]"
    )
    lines = [header]
    for rank, item in enumerate(message["items"][:top], start=1):
        codes = ", ".join(reason["code"] for reason in item["reasons"])
        explanation = f" — {escape(item['explanation'])}" if item.get("explanation") else ""
        lines.append(f"  {rank}. {_name(item['item_id'], descriptions)} [cyan]{codes}[/]{explanation}")
    for bundle in message["bundles"]:
        ids = [item if isinstance(item, str) else item["item_id"] for item in bundle["items"]]
        members = " + ".join(_name(item, descriptions) for item in ids)
        explanation = f" — {escape(bundle['explanation'])}" if bundle.get("explanation") else ""
        lines.append(f"  [magenta]bundle[/] {members}{explanation}")
    return "\n".join(lines)
