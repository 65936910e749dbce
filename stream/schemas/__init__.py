"""JSON Schemas of the contract (input event, recommendation, dead letter, query answer); see README.md."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SchemaName = Literal["clickstream-event", "recommendation", "dlq", "recommendation-query"]
SCHEMA_NAMES: tuple[SchemaName, ...] = get_args(SchemaName)


@cache
def load_schema(name: SchemaName) -> dict[str, Any]:
    return json.loads((Path(__file__).parent / f"{name}.schema.json").read_text())


def validator(name: SchemaName) -> Draft202012Validator:
    """A validator of one schema that resolves references to the others (the query answer reuses the
    recommendation's item and bundle)."""
    registry: Registry = Registry().with_resources(
        (load_schema(other)["$id"], Resource.from_contents(load_schema(other))) for other in SCHEMA_NAMES
    )
    return Draft202012Validator(load_schema(name), registry=registry)
