"""What differs between two YAML documents, as dotted paths with old and new values."""
from __future__ import annotations

import json
from dataclasses import dataclass

import yaml

MISSING = object()


@dataclass(frozen=True)
class Difference:
    path: str
    old: object = MISSING
    new: object = MISSING

    def describe(self, limit: int = 32) -> str:
        """`~ spec.meshConfig.accessLogFile: /dev/stdout → /dev/null` (long values shortened)."""
        if self.old is MISSING:
            return f"+ {self.path}: {short(self.new, limit)}"
        if self.new is MISSING:
            return f"- {self.path}: {short(self.old, limit)}"
        return f"~ {self.path}: {short(self.old, limit)} → {short(self.new, limit)}"


def diff(old: object, new: object, path: str = "") -> list[Difference]:
    """Mappings are compared key by key; anything else (lists included) as a whole value."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[Difference] = []
        for key in list(old) + [k for k in new if k not in old]:
            where = f"{path}.{key}" if path else str(key)
            if key not in new:
                found.extend(Difference(p, old=v) for p, v in _leaves(old[key], where))
            elif key not in old:
                found.extend(Difference(p, new=v) for p, v in _leaves(new[key], where))
            else:
                found.extend(diff(old[key], new[key], where))
        return found
    return [] if old == new else [Difference(path or ".", old, new)]


def _leaves(value: object, path: str):
    """An added or removed mapping, as its leaf paths (an empty one stays whole)."""
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _leaves(inner, f"{path}.{key}")
    else:
        yield path, value


def short(value: object, limit: int = 32) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    if isinstance(value, str) and (value == "" or value != value.strip() or _reads_as_other(value)):
        text = json.dumps(value)  # "true" the string, shown apart from true the boolean
    return text if len(text) <= limit else text[: limit - 1] + "…"


_STR_TAG = "tag:yaml.org,2002:str"


def _reads_as_other(text: str) -> bool:
    """Whether YAML would read ``text`` written bare as something other than a string (true, 5, null)."""
    return yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False)) != _STR_TAG
