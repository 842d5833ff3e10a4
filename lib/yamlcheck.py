"""Words for what a YAML document holds, shared by the checks of topology.yaml and base.yaml."""
from __future__ import annotations

import difflib
import re
from typing import Any

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_dns1123_label(value: object) -> bool:
    """A Kubernetes DNS-1123 label (k8s.io/apimachinery validation.IsDNS1123Label): lower-case letters,
    digits and '-', at most 63 characters."""
    return isinstance(value, str) and bool(DNS1123_LABEL.fullmatch(value)) and len(value) <= 63


def did_you_mean(word: object, choices) -> str:
    """`did you mean 'x'? ` for a near miss (a typo), else nothing."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.75)
    return f"did you mean {close[0]!r}? " if close else ""


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "true/false", type(None): "empty"}.get(type(value), type(value).__name__)


def value_at(data: Any, keys: tuple) -> tuple[bool, Any]:
    for k in keys:
        if not isinstance(data, dict) or k not in data:
            return False, None
        data = data[k]
    return True, data

