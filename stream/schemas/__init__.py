"""JSON Schemas of the streaming contract (input event, recommendation, dead letter); see README.md."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

SchemaName = Literal["clickstream-event", "recommendation", "dlq"]


@cache
def load_schema(name: SchemaName) -> dict[str, Any]:
    return json.loads((Path(__file__).parent / f"{name}.schema.json").read_text())
