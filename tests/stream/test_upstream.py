"""The names of faust-streaming, mode and aiokafka that the stream relies on: all there in the installed
versions, each one's absence caught by the start-up check, and none missing from the list."""

from __future__ import annotations

import ast
import functools
import inspect
import re
from pathlib import Path

import pytest

from stream import transport, worker
from stream.upstream import RELIANCES, Reliance, UpstreamChanged, check_upstream

STREAM = Path(transport.__file__).parent


@pytest.mark.parametrize("reliance", RELIANCES, ids=lambda r: r.where)
def test_each_relied_on_name_is_where_upstream_defines_it(reliance: Reliance) -> None:
    assert reliance.holds()


@pytest.mark.parametrize("reliance", RELIANCES, ids=lambda r: r.where)
def test_a_relied_on_name_gone_upstream_stops_the_worker_naming_it(
    reliance: Reliance, monkeypatch: pytest.MonkeyPatch
) -> None:
    if reliance.set_in is None:
        monkeypatch.delattr(reliance.owner, reliance.name)
    else:  # the method that assigned the attribute no longer does

        def assigns_nothing(*args: object, **kwargs: object) -> None:
            return None

        monkeypatch.setattr(reliance.owner, reliance.set_in, assigns_nothing)
    with pytest.raises(UpstreamChanged, match=re.escape(reliance.where)):
        check_upstream()


@pytest.mark.parametrize("reliance", [r for r in RELIANCES if r.set_in], ids=lambda r: r.where)
def test_an_attribute_is_found_through_a_wrapper_of_the_method_that_sets_it(
    reliance: Reliance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tracing, instrumentation and the tests' own fault injection wrap upstream methods (functools.wraps);
    the worker must not refuse to start for that."""
    method = getattr(reliance.owner, reliance.set_in)

    @functools.wraps(method)
    def wrapper(*args: object, **kwargs: object) -> object:
        return method(*args, **kwargs)

    monkeypatch.setattr(reliance.owner, reliance.set_in, wrapper)
    assert reliance.holds()


def test_the_worker_command_checks_before_it_starts() -> None:
    assert "check_upstream()" in inspect.getsource(worker.run_worker)


def overriding_classes() -> list[type]:
    """The stream's subclasses of upstream classes."""
    upstream = ("faust", "mode", "aiokafka")
    found = []
    for module in (transport, worker):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and any(
                base.__module__.split(".")[0] in upstream for base in cls.__mro__[1:]
            ):
                found.append(cls)
    return found


def defined_in_source(cls: type) -> list[str]:
    """The methods and class attributes a class's own source defines."""
    body = ast.parse(inspect.getsource(cls)).body[0]
    assert isinstance(body, ast.ClassDef)
    names = []
    for node in body.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.append(node.name)
        elif isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            names.extend(target.id for target in targets if isinstance(target, ast.Name))
    return names


def test_every_upstream_method_the_stream_overrides_is_listed() -> None:
    listed = {reliance.name for reliance in RELIANCES}
    unlisted = [
        f"{cls.__name__}.{name}"
        for cls in overriding_classes()
        for name in defined_in_source(cls)
        if (not name.startswith("__") or name == "__post_init__")
        and any(name in vars(base) for base in cls.__mro__[1:] if base is not object)
        and name not in listed
    ]
    assert overriding_classes() and unlisted == []


def test_every_private_upstream_name_the_stream_reads_is_listed() -> None:
    """A `_name` read anywhere in stream/ that stream/ itself does not define is upstream's."""
    own: set[str] = set()
    read: set[str] = set()
    for path in STREAM.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.ImportFrom):
                read.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Attribute):
                defines = isinstance(node.ctx, ast.Store) and ast.unparse(node.value) == "self"
                (own if defines else read).add(node.attr)
            elif isinstance(node, ast.AnnAssign | ast.Assign):
                targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
                own.update(target.id for target in targets if isinstance(target, ast.Name))
    private = {name for name in read - own if name.startswith("_") and not name.startswith("__")}
    assert private and private <= {reliance.name for reliance in RELIANCES}
