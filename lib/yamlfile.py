"""Reading YAML files with line numbers, so errors can say where they are."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

Location = tuple  # a path of keys/indexes into the document


class LocatedDoc:
    """A parsed YAML document plus the line of every key and value in it."""

    def __init__(self, path: Path, data: Any, lines: dict[Location, int]):
        self.path = path
        self.data = data
        self._lines = lines

    def line(self, *where) -> int | None:
        return self._lines.get(tuple(where))

    def where(self, *where) -> str:
        """``file:line`` for a location (or just the file when unknown)."""
        line = self.line(*where)
        return f"{self.path}:{line}" if line else str(self.path)


def _walk(node: yaml.Node, here: Location, lines: dict[Location, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            lines.setdefault(here + (key,), key_node.start_mark.line + 1)
            _walk(value_node, here + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault(here + (i,), item.start_mark.line + 1)
            _walk(item, here + (i,), lines)


# libyaml's parser, which PyYAML's wheels carry: the same documents several times faster (a kubeconfig
# of many clusters, each remote secret of every cluster read). PyYAML's own parser is the fallback, and
# the one that words a syntax error.
_LIBYAML = getattr(yaml, "CSafeLoader", None)


def _compose_and_load(text: str, loader_class) -> tuple[list[yaml.Node], list[Any]]:
    """Every document's node (for line numbers) and its data, from one parse."""
    loader = loader_class(text)
    try:
        nodes = []
        while loader.check_node():
            nodes.append(loader.get_node())
        return nodes, [loader.construct_document(node) for node in nodes]
    finally:
        loader.dispose()


def _parse(text: str) -> tuple[list[yaml.Node], list[Any]]:
    if _LIBYAML is not None:
        try:
            return _compose_and_load(text, _LIBYAML)
        except yaml.YAMLError:
            pass  # PyYAML's parser says what is wrong, in its words
    return _compose_and_load(text, yaml.SafeLoader)


def load_data(text: str | bytes) -> Any:
    """``yaml.safe_load``, with libyaml's parser where there is one: for what tools print (kubeconfigs)."""
    return yaml.load(text, Loader=_LIBYAML or yaml.SafeLoader)


def load_all_data(text: str) -> list[Any]:
    """``yaml.safe_load_all``, with libyaml's parser where there is one."""
    return list(yaml.load_all(text, Loader=_LIBYAML or yaml.SafeLoader))


def load_located(path: Path, what: str, missing_hint: str | None = None) -> LocatedDoc:
    """Load one YAML document from ``path``; every failure is a ConfigError naming the place."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}", hint=missing_hint) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        nodes, data = _parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{at}: {what} is not valid YAML: {problem}",
                          hint="fix the YAML syntax at that line (indentation, quotes, colons)") from None
    # Empty documents (a '---' with nothing or only comments after it) count for nothing, as for kubectl.
    documents = [(node, value) for node, value in zip(nodes, data) if value is not None]
    if len(documents) > 1:
        raise ConfigError(f"{path}:{documents[1][0].start_mark.line + 1}: {what} must hold one YAML document, found "
                          f"{len(documents)}", hint="remove the extra '---' documents")
    lines: dict[Location, int] = {}
    if documents:
        _walk(documents[0][0], (), lines)
    return LocatedDoc(path, documents[0][1] if documents else None, lines)


# Plain scalars that kubectl's YAML parser (YAML 1.2 rules) reads as numbers while PyYAML (YAML 1.1)
# writes them unquoted, e.g. a hex digest "87731235093e71": they must be quoted to stay strings.
_YAML12_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|0o[0-7]+|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if _YAML12_NUMBER.fullmatch(value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'")
    return dumper.represent_str(value)


_Dumper.add_representer(str, _represent_str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
