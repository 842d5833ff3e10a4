#!/usr/bin/env python3
"""An emulated Kubernetes API server for tests: one process per cluster, standard library only.

It speaks enough of the real REST protocol for the real kubectl (and any client-go style client) to
create, read, list, watch, update, patch and delete objects, including custom resources defined by
CRDs. It also plays a few of the controllers a real cluster runs: namespaces become Active, service
account token secrets get a token, LoadBalancer Services get an address (from 198.51.100.0/24, a
documentation range), Deployments report ready replicas.

    python -m tests.sandbox.apiserver --name NAME --token TOKEN [--lb-delay S | --lb-never] [--state-dir DIR]

Prints ``listening on http://127.0.0.1:PORT`` once ready. The same port also speaks TLS (a connection
that opens with a TLS handshake gets TLS): kubectl only sends bearer tokens over TLS, so kubeconfigs
should use ``https://127.0.0.1:PORT`` with the cluster CA written to ``<state-dir>/ca.crt`` (also served
at ``/_sandbox/ca.crt``). ``GET /_sandbox/dump`` returns every stored object as deterministic JSON (for
before/after comparisons in tests); ``/_sandbox/*`` needs no token and is not logged.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import heapq
import json
import os
import pickle
import re
import secrets as pysecrets
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

try:
    from . import gatewaycontroller, istiodca, meshmodel
except ImportError:  # run as a script: the module sits next to this file
    import gatewaycontroller
    import istiodca
    import meshmodel

SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "emulationMajor": "1",
    "emulationMinor": "33",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "32",
    "gitVersion": "v1.33.4",
    "gitCommit": "74cdb426e7f9d1d9a3b5e9a2a8d4c1f37e0b6f12",
    "gitTreeState": "clean",
    "buildDate": "2025-08-12T10:12:30Z",
    "goVersion": "go1.24.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}



def _clone(value):
    """A deep copy of stored data (JSON values, tuple keys): pickle's round trip, three times faster than
    copy.deepcopy, where the emulator spent a seventh of its time (every write and every mesh view copies)."""
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


def set_server_version(version: str) -> None:
    """Report Kubernetes ``version`` (1.MINOR.PATCH) from /version, as a server of that release does: the
    emulated minor equals it, and it stays compatible with the minor before it."""
    major, minor, patch = (version.lstrip("v").split(".") + ["0", "0"])[:3]
    SERVER_VERSION.update({"major": major, "minor": minor, "emulationMajor": major, "emulationMinor": minor,
                           "minCompatibilityMajor": major, "minCompatibilityMinor": str(int(minor) - 1),
                           "gitVersion": f"v{major}.{minor}.{patch}"})


def _pb_field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (payload shorter than 128 bytes)."""
    return bytes([(number << 3) | 2, len(payload)]) + payload


# An OpenAPI v2 document with no definitions, in the protobuf encoding kubectl asks for:
# swagger (1) = "2.0", info (2) = {title (1), version (2)}.
OPENAPI_V2_PROTO = _pb_field(1, b"2.0") + _pb_field(2, _pb_field(1, b"Kubernetes") +
                                                    _pb_field(2, SERVER_VERSION["gitVersion"].encode()))

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUB_VERBS = ("get", "patch", "update")
CREATE_ONLY = ("create",)
UNAUTHENTICATED_PATHS = ("/healthz", "/livez", "/readyz")
IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
LB_PREFIX = "198.51.100."  # TEST-NET-2, never routed
MESH_RETRY = 1.0  # seconds between the mesh agent's tries (a refused pod, a sidecar waiting for configuration)
POLL_ENV = "SETUP_MESH_POLL_INTERVAL"  # the tests' one knob for every poll (setup-mesh's and this retry)
NODE_ADDRESS = "192.0.2.10"  # TEST-NET-1

# A fixed, harmless certificate used as the cluster CA when openssl is not available.
FALLBACK_CA_PEM = """-----BEGIN CERTIFICATE-----
MIIBjDCCATGgAwIBAgIUElRT1/qeiYe5ITaUt4btZfWTjBowCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPc2FuZGJveC10ZXN0LWNhMCAXDTI2MTEyMTIzMDk1MloYDzIx
MjYxMDI4MjMwOTUyWjAaMRgwFgYDVQQDDA9zYW5kYm94LXRlc3QtY2EwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAQSFgIt3vpoQHL5Sq/n6lv0B/om1qWr3MuxLtFR
tgep4+pVfWqs2pB+yNv1lULzo2V3Zr6G3NsZMOQfgHmFJH3oo1MwUTAdBgNVHQ4E
FgQUWhtqVpfLar64uvqQzuXuZ24OyR0wHwYDVR0jBBgwFoAUWhtqVpfLar64uvqQ
zuXuZ24OyR0wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAh77s
vMre9vxeMnHGKM6NdqoeZnVRdssk77URGdhRRlACIQDTbsDkEXHPbNF9TYz0Aq8i
7/tO2zDfRcMzrwRIJu8JIA==
-----END CERTIFICATE-----
"""

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
B64_CHARS = re.compile(r"[^A-Za-z0-9+/=]")

MSG_LABEL = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
             "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
             "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
MSG_SUBDOMAIN = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                 "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                 "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
MSG_DNS1035 = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
               "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
               "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
MSG_LABEL_VALUE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                   "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
                   "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
MSG_QUALIFIED = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                 "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
                 "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
MSG_CONFIG_KEY = ("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  "
                  "or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')")


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def parse_rfc3339(value: str) -> float | None:
    try:
        return float(time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone)
    except (TypeError, ValueError):
        return None


def human_age(created: str | None) -> str:
    start = parse_rfc3339(created or "")
    if start is None:
        return "<unknown>"
    s = max(0, int(time.time() - start))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 730:
        return f"{d}d"
    return f"{d // 365}y"


# ---------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
               405: "MethodNotAllowed", 406: "NotAcceptable", 409: "Conflict", 410: "Expired",
               415: "UnsupportedMediaType", 422: "Invalid", 500: "InternalError"}

    def __init__(self, code: int, message: str, reason: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or self.REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason}
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _qualified(rt: "ResType") -> str:
    return f"{rt.plural}.{rt.group}" if rt.group else rt.plural


def _details(rt: "ResType", name: str, kind: str | None = None) -> dict:
    d = {"name": name}
    if rt.group:
        d["group"] = rt.group
    d["kind"] = kind or rt.plural
    return d


def not_found(rt: "ResType", name: str) -> ApiError:
    return ApiError(404, f'{_qualified(rt)} "{name}" not found', "NotFound", _details(rt, name))


def already_exists(rt: "ResType", name: str) -> ApiError:
    return ApiError(409, f'{_qualified(rt)} "{name}" already exists', "AlreadyExists", _details(rt, name))


def conflict(rt: "ResType", name: str) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {_qualified(rt)} "{name}": the object has been '
                         "modified; please apply your changes to the latest version and try again",
                    "Conflict", _details(rt, name))


def namespace_not_found(ns: str) -> ApiError:
    return ApiError(404, f'namespaces "{ns}" not found', "NotFound", {"name": ns, "kind": "namespaces"})


def no_resource() -> ApiError:
    return ApiError(404, "the server could not find the requested resource", "NotFound", {})


class Invalid(Exception):
    """Collects field errors; turned into a 422 Status naming the object."""

    def __init__(self):
        super().__init__("invalid")
        self.causes: list[tuple[str, str, str]] = []  # (reason, field, message)

    def add(self, field: str, message: str, reason: str = "FieldValueInvalid"):
        self.causes.append((reason, field, message))

    def invalid_value(self, field: str, value, detail: str):
        shown = json.dumps(value) if isinstance(value, str) else _go_repr(value)
        self.add(field, f"{field}: Invalid value: {shown}: {detail}")

    def required(self, field: str, detail: str = ""):
        msg = f"{field}: Required value" + (f": {detail}" if detail else "")
        self.add(field, msg, "FieldValueRequired")

    def unsupported(self, field: str, value, allowed: list[str]):
        opts = ", ".join(json.dumps(a) for a in allowed)
        self.add(field, f"{field}: Unsupported value: {json.dumps(value)}: supported values: {opts}",
                 "FieldValueNotSupported")

    def error(self, kind: str, name: str) -> ApiError:
        msgs = [c[2] for c in self.causes]
        if len(msgs) == 1:
            joined = msgs[0]
        else:
            joined = "[" + ", ".join(msgs) + "]"
        causes = [{"reason": r, "message": m.split(": ", 1)[1] if ": " in m else m, "field": f}
                  for r, f, m in self.causes]
        return ApiError(422, f'{kind} "{name}" is invalid: {joined}', "Invalid",
                        {"name": name, "kind": kind, "causes": causes})


def _go_repr(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, sort_keys=True)


# ---------------------------------------------------------------------------------------------- types


class ResType:
    """One served resource of one group-version."""

    def __init__(self, group: str, version: str, plural: str, kind: str, namespaced: bool, *,
                 short=(), singular: str = "", verbs=ALL_VERBS, subresources=(), categories=(),
                 list_kind: str = "", status_split: bool = False, generation: bool = False,
                 virtual: bool = False, crd: str | None = None, printer_columns=None, storage_group: str = ""):
        self.group = group
        self.version = version
        self.plural = plural
        self.kind = kind
        self.namespaced = namespaced
        self.short = tuple(short)
        self.singular = singular or kind.lower()
        self.verbs = tuple(verbs)
        self.subresources = tuple(subresources)
        self.categories = tuple(categories)
        self.list_kind = list_kind or kind + "List"
        self.status_split = status_split
        self.generation = generation
        self.virtual = virtual
        self.crd = crd
        self.printer_columns = printer_columns or []

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def store_key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    def discovery(self) -> list[dict]:
        entry = {"name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
                 "kind": self.kind, "verbs": list(self.verbs)}
        if self.short:
            entry["shortNames"] = list(self.short)
        if self.categories:
            entry["categories"] = list(self.categories)
        if not self.virtual:
            digest = hashlib.sha256(f"{self.group}/{self.version}/{self.kind}".encode()).digest()
            entry["storageVersionHash"] = base64.b64encode(digest[:8]).decode()
        out = [entry]
        for sub in self.subresources:
            if sub == "status":
                out.append({"name": f"{self.plural}/status", "singularName": "", "namespaced": self.namespaced,
                            "kind": self.kind, "verbs": list(SUB_VERBS)})
            elif sub == "token":
                out.append({"name": f"{self.plural}/token", "singularName": "", "namespaced": self.namespaced,
                            "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest",
                            "verbs": list(CREATE_ONLY)})
            elif sub == "scale":
                out.append({"name": f"{self.plural}/scale", "singularName": "", "namespaced": self.namespaced,
                            "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": list(SUB_VERBS)})
            elif sub == "finalize":
                out.append({"name": f"{self.plural}/finalize", "singularName": "", "namespaced": False,
                            "kind": self.kind, "verbs": ["update"]})
        return out


def _builtin_types() -> list[ResType]:
    R = ResType
    return [
        R("", "v1", "namespaces", "Namespace", False, short=("ns",), subresources=("status", "finalize"),
          status_split=True),
        R("", "v1", "nodes", "Node", False, short=("no",), subresources=("status",), status_split=True),
        R("", "v1", "secrets", "Secret", True),
        R("", "v1", "configmaps", "ConfigMap", True, short=("cm",)),
        R("", "v1", "services", "Service", True, short=("svc",), subresources=("status",), categories=("all",),
          status_split=True),
        R("", "v1", "serviceaccounts", "ServiceAccount", True, short=("sa",), subresources=("token",)),
        R("", "v1", "endpoints", "Endpoints", True, short=("ep",)),
        R("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
        R("", "v1", "pods", "Pod", True, short=("po",), subresources=("status",), categories=("all",),
          status_split=True),
        R("", "v1", "events", "Event", True, short=("ev",)),
        R("apps", "v1", "deployments", "Deployment", True, short=("deploy",), subresources=("status", "scale"),
          categories=("all",), status_split=True, generation=True),
        R("apps", "v1", "daemonsets", "DaemonSet", True, short=("ds",), subresources=("status",),
          categories=("all",), status_split=True, generation=True),
        R("apps", "v1", "statefulsets", "StatefulSet", True, short=("sts",), subresources=("status", "scale"),
          categories=("all",), status_split=True, generation=True),
        R("apps", "v1", "replicasets", "ReplicaSet", True, short=("rs",), subresources=("status", "scale"),
          categories=("all",), status_split=True, generation=True),
        R("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
          short=("crd", "crds"), subresources=("status",), categories=("api-extensions",), status_split=True,
          generation=True),
        R("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
        R("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
        R("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
        R("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
        R("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration",
          False, categories=("api-extensions",), generation=True),
        R("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
          "ValidatingWebhookConfiguration", False, categories=("api-extensions",), generation=True),
        R("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, short=("pdb",),
          subresources=("status",), status_split=True, generation=True),
        R("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True, short=("hpa",),
          subresources=("status",), categories=("all",), status_split=True, generation=True),
        R("authorization.k8s.io", "v1", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False,
          verbs=CREATE_ONLY, virtual=True),
    ]


BUILTIN_GROUP_ORDER = ["", "apps", "apiextensions.k8s.io", "rbac.authorization.k8s.io",
                       "admissionregistration.k8s.io", "policy", "autoscaling", "discovery.k8s.io",
                       "authorization.k8s.io"]


# ---------------------------------------------------------------------------------------------- selectors


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    reqs = []
    for part in _split_top(text or ""):
        m = re.fullmatch(r"(!?)\s*([A-Za-z0-9_./-]+)", part)
        if m:
            reqs.append((m.group(2), "!" if m.group(1) else "exists", ()))
            continue
        m = re.fullmatch(r"([A-Za-z0-9_./-]+)\s+(in|notin)\s*\(([^()]*)\)", part)
        if m:
            vals = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append((m.group(1), m.group(2), vals))
            continue
        m = re.fullmatch(r"([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)", part)
        if m:
            op = "!=" if m.group(2) == "!=" else "="
            reqs.append((m.group(1), op, (m.group(3),)))
            continue
        raise ApiError(400, f"unable to parse requirement: found '{part}', expected: '=', '!=', '==', 'in', "
                            "'notin'")
    return reqs


def labels_match(reqs, labels: dict) -> bool:
    labels = labels or {}
    for key, op, vals in reqs:
        present = key in labels
        val = labels.get(key)
        if op == "exists" and not present:
            return False
        if op == "!" and present:
            return False
        if op == "=" and (not present or val != vals[0]):
            return False
        if op == "!=" and present and val == vals[0]:
            return False
        if op == "in" and (not present or val not in vals):
            return False
        if op == "notin" and present and val in vals:
            return False
    return True


FIELD_LABELS = {
    "secrets": {"type"},
    "pods": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
             "status.phase", "status.podIP", "status.nominatedNodeName", "spec.hostNetwork"},
    "events": {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
               "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
               "reason", "reportingComponent", "source", "type"},
    "namespaces": {"status.phase"},
    "nodes": {"spec.unschedulable"},
    "replicasets": {"status.replicas"},
}


def parse_field_selector(text: str, rt: ResType) -> list[tuple[str, str, str]]:
    reqs = []
    for part in _split_top(text or ""):
        m = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise ApiError(400, f'invalid selector: \'{text}\'; can\'t understand \'{part}\'')
        path, op, value = m.group(1), m.group(2), m.group(3)
        if path not in ("metadata.name", "metadata.namespace") and path not in FIELD_LABELS.get(rt.plural, ()):
            raise ApiError(400, f'field label not supported: {path}')
        reqs.append((path, "!=" if op == "!=" else "=", value))
    return reqs


def fields_match(reqs, obj: dict) -> bool:
    for path, op, value in reqs:
        cur = obj
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is None:
            cur = ""
        elif isinstance(cur, bool):
            cur = "true" if cur else "false"
        else:
            cur = str(cur)
        if (op == "=") != (cur == value):
            return False
    return True


# ---------------------------------------------------------------------------------------------- patches


class PatchError(Exception):
    pass


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return _clone(patch)
    result = _clone(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f'json pointer "{path}" must start with "/"')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc, tokens, op):
    cur = doc
    for tok in tokens:
        if isinstance(cur, dict):
            if tok not in cur:
                raise PatchError(f"{op} operation does not apply: doc is missing path: /{'/'.join(tokens)}")
            cur = cur[tok]
        elif isinstance(cur, list):
            try:
                cur = cur[int(tok)]
            except (ValueError, IndexError):
                raise PatchError(f"{op} operation does not apply: doc is missing path: /{'/'.join(tokens)}")
        else:
            raise PatchError(f"{op} operation does not apply: doc is missing path: /{'/'.join(tokens)}")
    return cur


def json_patch(doc, ops):
    """RFC 6902 JSON patch."""
    if not isinstance(ops, list):
        raise PatchError("json patch must be a list of operations")
    doc = _clone(doc)

    def get_parent(path, op):
        tokens = _pointer(path)
        if not tokens:
            return None, None
        return _walk(doc, tokens[:-1], op), tokens[-1]

    def remove(path, op):
        parent, last = get_parent(path, op)
        if isinstance(parent, dict):
            if last not in parent:
                raise PatchError(f"{op} operation does not apply: doc is missing key: {path}")
            return parent.pop(last)
        if isinstance(parent, list):
            try:
                return parent.pop(int(last))
            except (ValueError, IndexError):
                raise PatchError(f"{op} operation does not apply: doc is missing index: {path}")
        raise PatchError(f"{op} operation does not apply: doc is missing path: {path}")

    def add(path, value, op):
        nonlocal doc
        parent, last = get_parent(path, op)
        if parent is None and last is None:
            doc = value
            return
        if isinstance(parent, dict):
            parent[last] = value
        elif isinstance(parent, list):
            if last == "-":
                parent.append(value)
            else:
                try:
                    idx = int(last)
                except ValueError:
                    raise PatchError(f"{op} operation does not apply: invalid index {last}")
                if idx < 0 or idx > len(parent):
                    raise PatchError(f"{op} operation does not apply: index out of bounds: {idx}")
                parent.insert(idx, value)
        else:
            raise PatchError(f"{op} operation does not apply: doc is missing path: {path}")

    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError("invalid json patch operation")
        kind, path = op["op"], op["path"]
        if kind == "add":
            add(path, _clone(op.get("value")), "add")
        elif kind == "remove":
            remove(path, "remove")
        elif kind == "replace":
            parent, last = get_parent(path, "replace")
            if parent is None and last is None:
                doc = _clone(op.get("value"))
                continue
            if isinstance(parent, dict):
                if last not in parent:
                    raise PatchError(f"replace operation does not apply: doc is missing key: {path}")
                parent[last] = _clone(op.get("value"))
            elif isinstance(parent, list):
                try:
                    parent[int(last)] = _clone(op.get("value"))
                except (ValueError, IndexError):
                    raise PatchError(f"replace operation does not apply: doc is missing index: {path}")
            else:
                raise PatchError(f"replace operation does not apply: doc is missing path: {path}")
        elif kind == "move":
            value = remove(op.get("from", ""), "move")
            add(path, value, "move")
        elif kind == "copy":
            value = _clone(_walk(doc, _pointer(op.get("from", "")), "copy"))
            add(path, value, "copy")
        elif kind == "test":
            if _walk(doc, _pointer(path), "test") != op.get("value"):
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {kind}")
    return doc


CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
PRIMITIVE_MERGE = "<primitive>"


def merge_key_for(path: tuple[str, ...], kind: str) -> str | None:
    """The strategic-merge key of the list at ``path`` in an object of ``kind`` (None: replace the list)."""
    if not path:
        return None
    last = path[-1]
    parent = path[-2] if len(path) > 1 else ""
    if path == ("metadata", "finalizers"):
        return PRIMITIVE_MERGE
    if path == ("metadata", "ownerReferences"):
        return "uid"
    if last in CONTAINER_LISTS:
        return "name"
    if last == "env" and parent in CONTAINER_LISTS:
        return "name"
    if last == "volumeMounts":
        return "mountPath"
    if last == "volumeDevices":
        return "devicePath"
    if last in ("volumes", "imagePullSecrets", "resourceClaims", "schedulingGates"):
        return "name"
    if last == "hostAliases":
        return "ip"
    if last == "ports":
        if parent in CONTAINER_LISTS:
            return "containerPort"
        if kind == "Service" and path == ("spec", "ports"):
            return "port"
    if last == "conditions":
        return "type"
    if last == "webhooks" and kind.endswith("WebhookConfiguration"):
        return "name"
    if last == "secrets" and kind == "ServiceAccount":
        return "name"
    if last == "topologySpreadConstraints":
        return "topologyKey"
    return None


def _strip_directives(value):
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items()
                if not (k.startswith("$") and (k in ("$patch", "$retainKeys") or "/" in k))}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value if not (isinstance(v, dict) and set(v) == {"$patch"})]
    return value


_DELETE = object()


def strategic_merge(original, patch, kind: str, path: tuple[str, ...] = ()):
    """Apply a strategic merge patch (the directives kubectl sends) to ``original``."""
    if not isinstance(patch, dict):
        return _clone(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives({k: v for k, v in patch.items() if k != "$patch"})
    if directive == "delete":
        return _DELETE
    if directive not in (None, "merge"):
        raise PatchError(f"Unknown patch type: {directive} in map: {json.dumps(patch)}")
    result = _clone(original) if isinstance(original, dict) else {}
    orders, deletions = {}, {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            deletions[key.split("/", 1)[1]] = value
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        sub_path = path + (key,)
        if isinstance(value, dict):
            merged = strategic_merge(current if isinstance(current, dict) else {}, value, kind, sub_path)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(current if isinstance(current, list) else [], value, kind, sub_path)
        else:
            result[key] = value
    for key, values in deletions.items():
        if isinstance(result.get(key), list):
            result[key] = [v for v in result[key] if v not in (values or [])]
    for key, order in orders.items():
        if isinstance(result.get(key), list) and isinstance(order, list):
            result[key] = _reorder(result[key], order, merge_key_for(path + (key,), kind))
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(current: list, patch: list, kind: str, path: tuple[str, ...]) -> list:
    key = merge_key_for(path, kind)
    if key is None:
        return _strip_directives(_clone(patch))
    if key == PRIMITIVE_MERGE:
        out = list(current)
        for v in patch:
            if v not in out:
                out.append(v)
        return out
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [_strip_directives(i) for i in patch if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    result = _clone(current)
    for item in patch:
        if not isinstance(item, dict):
            result.append(item)
            continue
        if key not in item:
            raise PatchError(f"map: {json.dumps(item)} does not contain declared merge key: {key}")
        idx = next((i for i, cur in enumerate(result) if isinstance(cur, dict) and cur.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            result = [c for c in result if not (isinstance(c, dict) and c.get(key) == item[key])]
            continue
        if idx is None:
            merged = strategic_merge({}, item, kind, path)
            if merged is not _DELETE:
                result.append(merged)
        else:
            merged = strategic_merge(result[idx], item, kind, path)
            if merged is _DELETE:
                result.pop(idx)
            else:
                result[idx] = merged
    return result


def _reorder(items: list, order: list, key: str | None) -> list:
    def ident(v):
        if key and key != PRIMITIVE_MERGE and isinstance(v, dict):
            return json.dumps(v.get(key), sort_keys=True)
        return json.dumps(v, sort_keys=True)

    wanted = [ident(o) for o in order]
    rank = {w: i for i, w in enumerate(wanted)}
    ordered = sorted((it for it in items if ident(it) in rank), key=lambda it: rank[ident(it)])
    rest = [it for it in items if ident(it) not in rank]
    return ordered + rest


# ------------------------------------------------------------- field ownership (server-side apply)
#
# As kube-apiserver keeps it (structured-merge-diff): every object's metadata.managedFields lists, per
# manager and operation, the fields it owns (fieldsV1). A path is a tuple of elements ("f", field name),
# ("k", JSON of an associative list item's key) or ("v", JSON of a set member); lists without a merge
# key are atomic (one field). An update takes the fields it changed from the others; an apply owns the
# fields of its configuration, conflicts (409) with another manager's differing value unless forced,
# and removes the fields it applied before and no longer applies, when nobody else owns them.

_UNOWNED_METADATA = {"name", "namespace", "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                     "deletionGracePeriodSeconds", "generation", "managedFields", "selfLink"}


def field_values(obj, kind: str, with_status: bool = True) -> dict[tuple, object]:
    """Every field path of ``obj`` a manager can own -> its value (None for an associative list item)."""
    out: dict[tuple, object] = {}

    def walk(value, path: tuple, names: tuple):
        if isinstance(value, dict):
            if not value and path:
                out[path] = {}
            for k, v in value.items():
                if not path and (k in ("apiVersion", "kind") or (k == "status" and not with_status)):
                    continue
                if names == ("metadata",) and k in _UNOWNED_METADATA:
                    continue
                walk(v, path + (("f", k),), names + (k,))
        elif isinstance(value, list):
            key = merge_key_for(names, kind)
            if key == PRIMITIVE_MERGE:
                for item in value:
                    out[path + (("v", json.dumps(item, sort_keys=True, separators=(",", ":"))),)] = item
            elif key and value and all(isinstance(i, dict) and key in i for i in value):
                for item in value:
                    item_path = path + (("k", json.dumps({key: item[key]}, separators=(",", ":"))),)
                    out[item_path] = None
                    for k, v in item.items():
                        walk(v, item_path + (("f", k),), names + (k,))
            else:
                out[path] = value
        else:
            out[path] = value

    walk(obj, (), ())
    return out


def _element_text(el) -> str:
    return f"{el[0]}:{el[1]}"


def fields_v1(paths) -> dict:
    tree: dict = {}
    for path in paths:
        node = tree
        for el in path:
            node = node.setdefault(_element_text(el), {})
    for path in paths:  # an owned item that also has owned fields is marked with "."
        node = tree
        for el in path:
            node = node[_element_text(el)]
        if path and any(k != "." for k in node):
            node["."] = {}
    return tree


def paths_of(tree: dict, prefix: tuple = ()) -> set:
    out = set()
    for key, sub in (tree or {}).items():
        if key == ".":
            out.add(prefix)
            continue
        path = prefix + ((key[0], key[2:]),)
        if sub:
            out |= paths_of(sub, path)
        else:
            out.add(path)
    return out


def path_text(path: tuple) -> str:
    """fieldpath.Path.String(): .metadata.labels.app, .spec.ports[port=443,protocol="TCP"], [="x"]."""
    out = ""
    for kind, value in path:
        if kind == "f":
            out += "." + value
        elif kind == "k":
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(value).items()) + "]"
        else:
            out += f"[={value}]"
    return out


def manager_text(entry: dict) -> str:
    """How kube-apiserver names a manager in a conflict (its identifier: no time)."""
    text = json.dumps(entry["manager"])
    if entry.get("subresource"):
        text += f" with subresource {json.dumps(entry['subresource'])}"
    if entry.get("operation") == "Update":
        text += f" using {entry.get('apiVersion')}"
    return text


def apply_conflict(conflicts: list[tuple[dict, tuple]]) -> ApiError:
    causes = [{"reason": "FieldManagerConflict", "message": f"conflict with {manager_text(e)}", "field": path_text(p)}
              for e, p in conflicts]
    if len(conflicts) == 1:
        entry, path = conflicts[0]
        message = f"Apply failed with 1 conflict: conflict with {manager_text(entry)}: {path_text(path)}"
    else:
        by_manager: dict[str, list[str]] = {}
        for entry, path in conflicts:
            by_manager.setdefault(manager_text(entry), []).append(path_text(path))
        lines = []
        for manager in sorted(by_manager):
            lines.append(f"conflicts with {manager}:")
            lines.extend(f"- {p}" for p in by_manager[manager])
        message = f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)
    return ApiError(409, message, "Conflict", {"causes": causes})


def dropped_paths(no_longer_applied: set, owned_by_others: set) -> list:
    """What an apply removes: the fields it no longer applies that nobody else owns (or owns under).
    A list item goes whole, its fields with it; the key fields of an item that stays are kept, since
    structured-merge-diff names an item by them."""
    dropped = {p for p in no_longer_applied if not any(o[:len(p)] == p for o in owned_by_others)}
    items = {p for p in dropped if p[-1][0] == "k"}
    out = []
    for path in sorted(dropped, key=len, reverse=True):
        if any(path[:i] in items for i in range(1, len(path))):
            continue
        if (len(path) > 1 and path[-1][0] == "f" and path[-2][0] == "k"
                and path[-1][1] in json.loads(path[-2][1])):
            continue
        out.append(path)
    return out


def remove_path(obj, path: tuple) -> None:
    """Remove one owned field (or list item) from ``obj``; parents left empty go too."""
    trail = [obj]
    node = obj
    for kind, value in path[:-1]:
        if kind == "f" and isinstance(node, dict):
            node = node.get(value)
        elif kind == "k" and isinstance(node, list):
            key = json.loads(value)
            node = next((i for i in node if isinstance(i, dict) and all(i.get(k) == v for k, v in key.items())), None)
        else:
            return
        if node is None:
            return
        trail.append(node)
    kind, value = path[-1]
    if kind == "f" and isinstance(node, dict):
        node.pop(value, None)
    elif kind == "k" and isinstance(node, list):
        key = json.loads(value)
        node[:] = [i for i in node if not (isinstance(i, dict) and all(i.get(k) == v for k, v in key.items()))]
    elif kind == "v" and isinstance(node, list):
        node[:] = [i for i in node if json.dumps(i, sort_keys=True, separators=(",", ":")) != value]
    for depth in range(len(path) - 1, 0, -1):  # drop the maps this left empty (metadata stays)
        parent, child = trail[depth - 1], trail[depth]
        el_kind, el_value = path[depth - 1]
        if child in ({}, []) and el_kind == "f" and isinstance(parent, dict) and path[:depth] != (("f", "metadata"),):
            parent.pop(el_value, None)
        else:
            break


def manager_from_agent(agent: str | None) -> str | None:
    """kube-apiserver's default field manager: the User-Agent up to its first "/"."""
    if not agent:
        return None
    return agent.split("/", 1)[0][:128] or None


# ---------------------------------------------------------------------------------------------- helpers


def _strip_nulls(value):
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def _b64_error(value: str) -> str | None:
    if not isinstance(value, str):
        return "illegal base64 data at input byte 0"
    bad = B64_CHARS.search(value)
    if bad:
        return f"illegal base64 data at input byte {bad.start()}"
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return f"illegal base64 data at input byte {max(0, len(value) - (len(value) % 4 or 4))}"
    return None


def make_tls_material(name: str, hostnames: list[str] | tuple[str, ...] = ()) -> tuple[str, str, str] | None:
    """A fresh self-signed cluster CA that also serves 127.0.0.1: (ca, cert, key) PEMs; ca == cert.

    One openssl run per cluster keeps start-up cheap; kubectl (Go) and Python's ssl both accept a trusted
    self-signed certificate as the server's certificate.
    """
    tmp = tempfile.mkdtemp(prefix="sandbox-tls-")
    cn = re.sub(r"[^A-Za-z0-9.-]+", "-", name)[:40] or "cluster"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "tls.key", "-out", "tls.crt", "-subj", f"/CN={cn}-ca", "-days", "3650",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature,keyEncipherment",
             "-addext", "extendedKeyUsage=serverAuth",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
                        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
                        + "".join(f",DNS:{h}" for h in hostnames)],
            cwd=tmp, check=True, capture_output=True, timeout=20)
        cert = open(os.path.join(tmp, "tls.crt"), encoding="ascii").read()
        key = open(os.path.join(tmp, "tls.key"), encoding="ascii").read()
        return cert, cert, key
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tls_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tmp = tempfile.mkdtemp(prefix="sandbox-tls-")
    try:
        cert, key = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
        with open(cert, "w") as fh:
            fh.write(cert_pem)
        with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write(key_pem)
        ctx.load_cert_chain(cert, key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ---------------------------------------------------------------------------------------------- cluster


class Cluster:
    """The state of one emulated cluster and the controllers acting on it."""

    def __init__(self, name: str, token: str, lb_delay: float | None = 0.0, lb_ip_start: int = 10,
                 ca_pem: str | None = None, hosts_file: str | None = None, ready_delay: float = 0.0,
                 namespace_delete_delay: float = 0.0):
        self.name = name
        self.hosts_file = hosts_file  # the sandbox's API server names (see meshmodel.py)
        self.call_counters: dict = {}  # round-robin position per (calling pod, host, port)
        self.token = token
        self.lb_delay = lb_delay
        self.ready_delay = ready_delay  # seconds before a new Deployment's replicas are ready
        self.namespace_delete_delay = namespace_delete_delay  # seconds a deleted namespace stays Terminating
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.rv = 0
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.events: deque = deque(maxlen=20000)
        self.builtin = _builtin_types()
        self.builtin_index = {(t.group, t.version, t.plural): t for t in self.builtin}
        self.crd_types: dict[tuple[str, str, str], ResType] = {}
        self.tokens: dict[str, tuple] = {}
        self.next_cluster_ip = 2
        self.next_node_port = 30000
        self.next_lb_ip = max(1, min(254, lb_ip_start))
        self.timers: list = []
        self.ca_pem = ca_pem or FALLBACK_CA_PEM
        self.openapi_cache: dict | None = None
        self.bytes_cache: dict[str, bytes] = {}  # serialized discovery/openapi answers; cleared when types change
        self.stopping = False
        self.gateway_reconcile_pending = False
        self.webhook_patch_pending = False
        # Istio's injector and the sidecars' configuration when only the network can tell (meshmodel.py):
        self.mesh_replicate: dict = {}  # Deployment key -> uid whose pods wait for the injector's verdict
        self.mesh_waiting: set = set()  # pod keys whose istio-proxy has not been configured yet
        self.replica_failures: dict = {}  # Deployment key -> why its pods cannot be created
        self.pod_injection = None  # the verdict for the pod being created (set by _replicate_pods)
        self.mesh_wake = threading.Event()
        with self.lock:
            self._bootstrap()
        self.controller = threading.Thread(target=self._run_timers, name="controllers", daemon=True)
        self.controller.start()
        self.mesh_agent = threading.Thread(target=self._run_mesh_agent, name="mesh", daemon=True)
        self.mesh_agent.start()

    # -- type registry -------------------------------------------------------------------------

    def all_types(self) -> list[ResType]:
        return self.builtin + [self.crd_types[k] for k in sorted(self.crd_types)]

    def lookup(self, group: str, version: str, plural: str) -> ResType | None:
        return self.builtin_index.get((group, version, plural)) or self.crd_types.get((group, version, plural))

    def type_for_kind(self, group: str, kind: str) -> ResType | None:
        for t in self.all_types():
            if t.group == group and t.kind == kind:
                return t
        return None

    def group_versions(self) -> list[tuple[str, list[str]]]:
        """Served groups in discovery order with their versions (preferred first)."""
        groups: dict[str, list[str]] = {}
        for t in self.builtin:
            groups.setdefault(t.group, [])
            if t.version not in groups[t.group]:
                groups[t.group].append(t.version)
        crd_groups: dict[str, list[str]] = {}
        for (group, version, _plural) in self.crd_types:
            crd_groups.setdefault(group, []).append(version)
        out = [(g, groups[g]) for g in BUILTIN_GROUP_ORDER if g in groups]
        for g in sorted(crd_groups):
            if g in groups:
                continue
            versions = sorted(set(crd_groups[g]), key=_version_priority)
            out.append((g, versions))
        return out

    def _rebuild_crd_types(self):
        types = {}
        for key, crd in self.objects.items():
            if key[:2] != ("apiextensions.k8s.io", "customresourcedefinitions"):
                continue
            spec = crd.get("spec", {})
            names = spec.get("names", {})
            for v in spec.get("versions", []):
                if not v.get("served", True):
                    continue
                subres = v.get("subresources") or {}
                t = ResType(spec.get("group", ""), v.get("name", ""), names.get("plural", ""), names.get("kind", ""),
                            spec.get("scope", "Namespaced") == "Namespaced",
                            short=names.get("shortNames") or (), singular=names.get("singular", ""),
                            categories=names.get("categories") or (), list_kind=names.get("listKind", ""),
                            subresources=("status",) if "status" in subres else (),
                            status_split="status" in subres, generation=True, crd=key[3],
                            printer_columns=v.get("additionalPrinterColumns") or [])
                types[(t.group, t.version, t.plural)] = t
        self.crd_types = types
        self.openapi_cache = None
        self.bytes_cache = {}

    # -- bootstrap -----------------------------------------------------------------------------

    def _bootstrap(self):
        ns_type = self.lookup("", "v1", "namespaces")
        for ns in SYSTEM_NAMESPACES:
            uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-cluster/{self.name}/namespace/{ns}"))
            self._create(ns_type, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                         {}, uid=uid)
        self._create(self.lookup("", "v1", "services"), "default", {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
        }, {})
        self._create(self.lookup("", "v1", "nodes"), None, {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"{_node_name(self.name)}-control-plane", "labels": {
                "kubernetes.io/hostname": f"{_node_name(self.name)}-control-plane", "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/control-plane": ""}},
            "spec": {},
        }, {})

    # -- storage primitives ----------------------------------------------------------------------

    def _commit(self, rt: ResType, key, obj: dict, event: str, old: dict | None):
        self.rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        if event == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.events.append((self.rv, event, key, obj, old))
        self.cond.notify_all()
        return obj

    def _key(self, rt: ResType, ns: str | None, name: str):
        return (rt.group, rt.plural, (ns or "") if rt.namespaced else "", name)

    def _present(self, rt: ResType, obj: dict) -> dict:
        out = _clone(obj)
        if rt.crd:
            out["apiVersion"] = rt.api_version
        return out

    def _namespace_exists(self, ns: str) -> bool:
        return ("", "namespaces", "", ns) in self.objects

    def _namespace_terminating(self, ns: str) -> bool:
        obj = self.objects.get(("", "namespaces", "", ns))
        return bool(obj and obj["metadata"].get("deletionTimestamp"))

    # -- field ownership -------------------------------------------------------------------------

    @staticmethod
    def _manager_of(query: dict) -> str | None:
        return query.get("fieldManager") or query.get("_agentManager")

    def _entry(self, rt: ResType, manager: str, operation: str, paths, old_entry: dict | None = None) -> dict:
        tree = fields_v1(paths)
        if old_entry is not None and old_entry.get("fieldsV1") == tree:
            return old_entry  # nothing changed hands: the entry (and its time) stays as it was
        return {"manager": manager, "operation": operation, "apiVersion": rt.api_version, "time": now_rfc3339(),
                "fieldsType": "FieldsV1", "fieldsV1": tree}

    def _owners_after_update(self, rt: ResType, old: dict, new: dict, manager: str | None) -> list[dict]:
        """An update's manager takes the fields it changed; fields it removed belong to nobody."""
        entries = list((old.get("metadata") or {}).get("managedFields") or [])
        if manager is None:
            return entries
        before = field_values(old, rt.kind, not rt.status_split)
        after = field_values(new, rt.kind, not rt.status_split)
        changed = {p for p, v in after.items() if p not in before or before[p] != v}
        removed = set(before) - set(after)
        result, mine, mine_entry = [], set(), None
        for entry in entries:
            paths = paths_of(entry.get("fieldsV1")) - removed
            if (entry.get("manager"), entry.get("operation"), entry.get("subresource")) == (manager, "Update", None):
                mine, mine_entry = paths, entry
                continue
            paths -= changed
            if paths:
                result.append(self._entry(rt, entry["manager"], entry["operation"], paths, entry) | (
                    {"subresource": entry["subresource"]} if entry.get("subresource") else {}))
        if mine | changed:
            result.append(self._entry(rt, manager, "Update", mine | changed, mine_entry))
        return result

    def _owners_after_apply(self, rt: ResType, live: dict | None, config: dict, new: dict, manager: str,
                            force: bool) -> list[dict]:
        """Conflicts, ownership and removals of an apply; removes from ``new`` what the manager dropped."""
        applied = field_values(config, rt.kind, not rt.status_split)
        live_values = field_values(live, rt.kind, not rt.status_split) if live else {}
        entries = list(((live or {}).get("metadata") or {}).get("managedFields") or [])
        conflicts, others, previous, previous_entry = [], [], set(), None
        for entry in entries:
            paths = paths_of(entry.get("fieldsV1"))
            if (entry.get("manager"), entry.get("operation"), entry.get("subresource")) == (manager, "Apply", None):
                previous, previous_entry = paths, entry
                continue
            clash = sorted((p for p in paths & set(applied)
                            if applied[p] is not None and p in live_values and live_values[p] != applied[p]),
                           key=path_text)
            conflicts.extend((entry, p) for p in clash)
            others.append((entry, paths - set(clash)))
        if conflicts and not force:
            raise apply_conflict(conflicts)
        owned_by_others = set().union(*(paths for _, paths in others)) if others else set()
        for path in dropped_paths(previous - set(applied), owned_by_others):
            remove_path(new, path)
        result = []
        for entry, paths in others:
            if paths:
                result.append(self._entry(rt, entry["manager"], entry["operation"], paths, entry) | (
                    {"subresource": entry["subresource"]} if entry.get("subresource") else {}))
        result.append(self._entry(rt, manager, "Apply", set(applied), previous_entry))
        return result

    # -- authentication ------------------------------------------------------------------------

    def authenticate(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        tok = header[7:].strip()
        if tok and pysecrets.compare_digest(tok, self.token):
            return True
        with self.lock:
            ref = self.tokens.get(tok)
            if not ref:
                return False
            return ref in self.objects

    def user_of(self, header: str | None) -> tuple[str, list[str]] | None:
        """The service account a token belongs to, as (user name, groups); None for the admin token."""
        tok = (header or "")[7:].strip()
        with self.lock:
            ref = self.tokens.get(tok)
            if not ref or (self.token and pysecrets.compare_digest(tok, self.token)):
                return None
            ns, name = ref[2], ref[3]
            if ref[1] == "secrets":
                name = ((self.objects.get(ref) or {}).get("metadata", {}).get("annotations") or {}).get(
                    "kubernetes.io/service-account.name", name)
        return (f"system:serviceaccount:{ns}:{name}",
                ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"])

    def authorize(self, user: tuple[str, list[str]], verb: str, group: str, resource: str, ns: str | None,
                  name: str | None) -> None:
        """RBAC, as kube-apiserver's authorizer: allowed when a (Cluster)RoleBinding of the user grants it."""
        username, groups = user
        if group == "authorization.k8s.io" and resource in ("selfsubjectaccessreviews", "selfsubjectrulesreviews"):
            return  # system:basic-user, bound to every authenticated user

        def subject_matches(subject: dict) -> bool:
            kind = subject.get("kind")
            if kind == "ServiceAccount":
                return f"system:serviceaccount:{subject.get('namespace')}:{subject.get('name')}" == username
            if kind == "Group":
                return subject.get("name") in groups
            return kind == "User" and subject.get("name") == username

        def rule_allows(rule: dict) -> bool:
            verbs, api_groups = rule.get("verbs") or [], rule.get("apiGroups") or []
            resources, names = rule.get("resources") or [], rule.get("resourceNames") or []
            return ((verb in verbs or "*" in verbs) and (group in api_groups or "*" in api_groups)
                    and (resource in resources or "*" in resources
                         or ("/" in resource and f"*/{resource.split('/', 1)[1]}" in resources))
                    and (not names or (name is not None and name in names)))

        with self.lock:
            bindings = [(b, None) for k, b in self.objects.items()
                        if k[:2] == ("rbac.authorization.k8s.io", "clusterrolebindings")]
            if ns:
                bindings += [(b, ns) for k, b in self.objects.items()
                             if k[:3] == ("rbac.authorization.k8s.io", "rolebindings", ns)]
            for binding, where in bindings:
                if not any(subject_matches(s) for s in binding.get("subjects") or []):
                    continue
                ref = binding.get("roleRef") or {}
                if ref.get("kind") == "ClusterRole":
                    role = self.objects.get(("rbac.authorization.k8s.io", "clusterroles", "", ref.get("name")))
                else:
                    role = self.objects.get(("rbac.authorization.k8s.io", "roles", where or "", ref.get("name")))
                if role and any(rule_allows(r) for r in role.get("rules") or []):
                    return
        what = f'{resource.split("/")[0]}.{group}' if group else resource.split("/")[0]
        scope = f'in the namespace "{ns}"' if ns else "at the cluster scope"
        raise ApiError(403, f'{what}{f" {json.dumps(name)}" if name else ""} is forbidden: User "{username}" cannot '
                            f'{verb} resource "{resource}" in API group "{group}" {scope}', "Forbidden",
                       {"name": name or "", **({"group": group} if group else {}), "kind": resource.split("/")[0]})

    # -- read ----------------------------------------------------------------------------------

    def get(self, rt: ResType, ns: str | None, name: str) -> dict:
        with self.lock:
            obj = self.objects.get(self._key(rt, ns, name))
            if obj is None:
                raise not_found(rt, name)
            return self._present(rt, obj)

    def list(self, rt: ResType, ns: str | None, query: dict) -> dict:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), rt)
        limit = _int(query.get("limit"), 0)
        cont = query.get("continue") or ""
        with self.lock:
            items = self._select(rt, ns, labels, fields)
            rv = str(self.rv)
        meta = {"resourceVersion": rv}
        if cont:
            try:
                after = json.loads(base64.urlsafe_b64decode(cont.encode()).decode())["after"]
            except (ValueError, KeyError, binascii.Error):
                raise ApiError(400, "continue key is not valid: illegal base64 data")
            items = [i for i in items if [i[0][2], i[0][3]] > after]
        if limit > 0 and len(items) > limit:
            last = items[limit - 1][0]
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"after": [last[2], last[3]], "rv": rv}).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta,
                "items": [self._present(rt, o) for _, o in items]}

    def _select(self, rt, ns, labels, fields):
        out = []
        for key in sorted(k for k in self.objects if k[0] == rt.group and k[1] == rt.plural):
            if rt.namespaced and ns and key[2] != ns:
                continue
            obj = self.objects[key]
            if labels and not labels_match(labels, obj.get("metadata", {}).get("labels")):
                continue
            if fields and not fields_match(fields, obj):
                continue
            out.append((key, obj))
        return out

    # -- create --------------------------------------------------------------------------------

    def create(self, rt: ResType, ns: str | None, body, query: dict) -> tuple[int, dict]:
        with self.lock:
            obj = self._create(rt, ns, body, query)
            return 201, self._present(rt, obj)

    def _check_type(self, rt: ResType, body) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request was in an unknown format - accepted media types "
                                "include: application/json, application/yaml, application/vnd.kubernetes.protobuf")
        kind = body.get("kind")
        api_version = body.get("apiVersion")
        if not kind:
            raise ApiError(400, f"Object 'Kind' is missing in '{json.dumps(body)[:400]}'")
        if api_version and api_version != rt.api_version:
            raise ApiError(400, f"the API version in the data ({api_version}) does not match the expected API "
                                f"version ({rt.api_version})")
        if kind != rt.kind:
            raise ApiError(400, f"the kind in the data ({kind}) does not match the expected kind ({rt.kind}) "
                                f"for {_qualified(rt)}")
        body = _clone(body)
        body["apiVersion"] = rt.api_version
        meta = body.get("metadata")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise ApiError(400, f"{rt.kind} in version \"{rt.version}\" cannot be handled as a {rt.kind}: "
                                "json: cannot unmarshal into Go struct field .metadata of type v1.ObjectMeta")
        body["metadata"] = {k: v for k, v in meta.items() if v is not None}
        if not rt.crd:
            body = _strip_nulls(body)
        return body

    def _create(self, rt: ResType, ns: str | None, body, query: dict, uid: str | None = None,
                manager: str | None = None, managed: list | None = None) -> dict:
        body = self._check_type(rt, body)
        meta = body["metadata"]
        creator = None if manager else self._manager_of(query)
        requested = field_values(body, rt.kind, not rt.status_split) if creator else {}
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise ApiError(400, "the namespace of the provided object does not match the namespace sent on "
                                    "the request")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(
                pysecrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
        for server_field in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation",
                             "managedFields", "selfLink"):
            meta.pop(server_field, None)
        name = meta.get("name", "")
        if rt.namespaced and not self._namespace_exists(ns):
            raise namespace_not_found(ns)
        if rt.namespaced and self._namespace_terminating(ns):
            # The NamespaceLifecycle admission plugin: nothing new in a namespace being deleted.
            details = _details(rt, name)
            details["causes"] = [{"reason": "NamespaceTerminating", "message": f"namespace {ns} is being terminated",
                                  "field": "metadata.namespace"}]
            raise ApiError(403, f'{_qualified(rt)} "{name}" is forbidden: unable to create new content in namespace '
                                f"{ns} because it is being terminated", "Forbidden", details)
        self._admit(rt, body, None)
        self._validate(rt, body)
        key = self._key(rt, ns, name)
        if key in self.objects:
            raise already_exists(rt, name)
        meta["uid"] = uid or str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if rt.generation:
            meta["generation"] = 1
        if rt.status_split and rt.crd:
            body.pop("status", None)
        self._allocate(rt, body, None)
        if managed is not None:
            meta["managedFields"] = managed
        elif creator and requested:
            meta["managedFields"] = [self._entry(rt, creator, "Update", set(requested))]
        if query.get("dryRun") == "All":
            return body
        obj = self._commit(rt, key, body, "ADDED", None)
        self._after_write(rt, key, None, obj)
        return obj

    # -- update / patch ------------------------------------------------------------------------

    def replace(self, rt: ResType, ns: str | None, name: str, body, query: dict, sub: str | None) -> dict:
        with self.lock:
            key = self._key(rt, ns, name)
            old = self.objects.get(key)
            if old is None:
                raise not_found(rt, name)
            body = self._check_type(rt, body)
            new_meta = body["metadata"]
            if new_meta.get("name", name) != name:
                raise ApiError(400, f"the name of the object ({new_meta.get('name')}) does not match the name on "
                                    f"the URL ({name})")
            if rt.namespaced and new_meta.get("namespace") and new_meta["namespace"] != ns:
                raise ApiError(400, "the namespace of the provided object does not match the namespace sent on "
                                    "the request")
            rv = new_meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(rt, name)
            return self._present(rt, self._update(rt, key, old, body, query, sub))

    def patch(self, rt: ResType, ns: str | None, name: str, raw: bytes, content_type: str, query: dict,
              sub: str | None) -> tuple[int, dict]:
        ctype = (content_type or "").split(";")[0].strip().lower()
        try:
            patch = json.loads(raw.decode("utf-8") or "null")
        except (UnicodeDecodeError, ValueError) as exc:
            if ctype == "application/apply-patch+yaml":
                raise ApiError(400, f"error decoding YAML: this server accepts JSON-formatted apply patches only "
                                    f"({exc})")
            raise ApiError(400, f"error decoding patch: {exc}")
        with self.lock:
            key = self._key(rt, ns, name)
            old = self.objects.get(key)
            if ctype == "application/apply-patch+yaml":
                return self._apply(rt, ns, name, key, old, patch, query, sub)
            if old is None:
                raise not_found(rt, name)
            current = self._present(rt, old)
            try:
                if ctype == "application/merge-patch+json":
                    if not isinstance(patch, dict):
                        raise PatchError("merge patch must be a JSON object")
                    new = merge_patch(current, patch)
                elif ctype == "application/json-patch+json":
                    new = json_patch(current, patch)
                elif ctype == "application/strategic-merge-patch+json":
                    if rt.crd:
                        raise ApiError(415, "strategic merge patch is not supported for custom resources",
                                       "UnsupportedMediaType")
                    if not isinstance(patch, dict):
                        raise PatchError("strategic merge patch must be a JSON object")
                    new = strategic_merge(current, patch, rt.kind)
                else:
                    raise ApiError(415, "the body of the request was in an unknown format - accepted media "
                                        "types include: application/json-patch+json, application/merge-patch+json, "
                                        "application/apply-patch+yaml, application/strategic-merge-patch+json",
                                   "UnsupportedMediaType")
            except PatchError as exc:
                raise ApiError(422, str(exc), "Invalid", _details(rt, name, rt.kind))
            if not isinstance(new, dict):
                raise ApiError(422, "the patched object is not a JSON object", "Invalid", _details(rt, name, rt.kind))
            new = self._check_type(rt, new)
            new_meta = new["metadata"]
            if new_meta.get("name") != name:
                raise ApiError(422, f"metadata.name: Invalid value: {json.dumps(new_meta.get('name'))}: field is "
                                    "immutable", "Invalid", _details(rt, name, rt.kind))
            rv = new_meta.get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(rt, name)
            return 200, self._present(rt, self._update(rt, key, old, new, query, sub))

    def _apply(self, rt, ns, name, key, old, patch, query, sub):
        manager = query.get("fieldManager")
        if not manager:
            raise ApiError(400, "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is "
                                "required for apply patch")
        if not isinstance(patch, dict):
            raise ApiError(400, "error decoding YAML: apply patch must be an object")
        patch = self._check_type(rt, patch)
        meta = patch["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise ApiError(400, f"the name of the object ({meta['name']}) does not match the name on the URL "
                                f"({name})")
        meta["name"] = name
        force = str(query.get("force", "")).lower() in ("true", "1")
        if old is None:
            if sub:
                raise not_found(rt, name)
            owners = self._owners_after_apply(rt, None, patch, {}, manager, force)
            obj = self._create(rt, ns, patch, query, manager=manager, managed=owners)
            return 201, self._present(rt, obj)
        new = self._present(rt, old)
        if rt.crd:
            new = merge_patch(new, patch)
        else:
            new = strategic_merge(new, patch, rt.kind)
        owners = self._owners_after_apply(rt, old, patch, new, manager, force)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        obj = self._update(rt, key, old, new, query, sub, managed=owners)
        return 200, self._present(rt, obj)

    def _update(self, rt: ResType, key, old: dict, new: dict, query: dict, sub: str | None,
                managed: list | None = None) -> dict:
        if sub == "status":
            merged = _clone(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            new = merged
        elif rt.status_split:
            if "status" in old:
                new["status"] = _clone(old["status"])
            else:
                new.pop("status", None)
        if not rt.crd:
            new = _strip_nulls(new)
        meta = new.setdefault("metadata", {})
        old_meta = old["metadata"]
        for fixed in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
            if fixed in old_meta:
                meta[fixed] = old_meta[fixed]
            else:
                meta.pop(fixed, None)
        meta.pop("managedFields", None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if sub != "status":
            self._admit(rt, new, old)
            self._validate(rt, new, old)
            self._allocate(rt, new, old)
        if rt.generation and _spec_part(new) != _spec_part(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if managed is None:
            managed = (old_meta.get("managedFields") or [] if sub == "status"
                       else self._owners_after_update(rt, old, new, self._manager_of(query)))
        if managed:
            meta["managedFields"] = managed
        if new == old:
            return old
        if query.get("dryRun") == "All":
            return new
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not _is_namespace(rt):
            obj = self._commit(rt, key, new, "DELETED", old)
            self._after_delete(rt, key, obj)
            return obj
        obj = self._commit(rt, key, new, "MODIFIED", old)
        self._after_write(rt, key, old, obj)
        return obj

    # -- scale subresource ---------------------------------------------------------------------

    def _scale_of(self, obj: dict) -> dict:
        meta = obj["metadata"]
        match = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                             if k in meta},
                "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
                "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                           "selector": ",".join(f"{k}={v}" for k, v in sorted(match.items()))}}

    def get_scale(self, rt: ResType, ns: str, name: str) -> dict:
        with self.lock:
            obj = self.objects.get(self._key(rt, ns, name))
            if obj is None:
                raise not_found(rt, name)
            return self._scale_of(obj)

    def set_scale(self, rt: ResType, ns: str, name: str, scale, query: dict, raw_patch=None, ctype="") -> dict:
        with self.lock:
            key = self._key(rt, ns, name)
            old = self.objects.get(key)
            if old is None:
                raise not_found(rt, name)
            if raw_patch is not None:
                current = self._scale_of(old)
                try:
                    if ctype.startswith("application/json-patch+json"):
                        scale = json_patch(current, raw_patch)
                    else:
                        scale = merge_patch(current, raw_patch)
                except PatchError as exc:
                    raise ApiError(422, str(exc), "Invalid", _details(rt, name, "Scale"))
            if not isinstance(scale, dict):
                raise ApiError(400, "the body of the request was in an unknown format")
            rv = (scale.get("metadata") or {}).get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(rt, name)
            replicas = (scale.get("spec") or {}).get("replicas", 0)
            if not isinstance(replicas, int) or replicas < 0:
                err = Invalid()
                err.invalid_value("spec.replicas", replicas, "must be greater than or equal to 0")
                raise err.error("Scale", name)
            new = _clone(old)
            new.setdefault("spec", {})["replicas"] = replicas
            return self._scale_of(self._update(rt, key, old, new, query, None))

    # -- delete --------------------------------------------------------------------------------

    def delete(self, rt: ResType, ns: str | None, name: str, query: dict, options: dict) -> dict:
        with self.lock:
            key = self._key(rt, ns, name)
            obj = self.objects.get(key)
            if obj is None:
                raise not_found(rt, name)
            pre = (options or {}).get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != obj["metadata"].get("uid"):
                raise ApiError(409, f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                                    f"{obj['metadata'].get('uid')}", "Conflict", _details(rt, name))
            if pre.get("resourceVersion") and pre["resourceVersion"] != obj["metadata"].get("resourceVersion"):
                raise ApiError(409, f"Precondition failed: ResourceVersion in precondition: "
                                    f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                    f"{obj['metadata'].get('resourceVersion')}", "Conflict", _details(rt, name))
            if rt.plural == "namespaces" and not rt.group and name in IMMORTAL_NAMESPACES:
                raise ApiError(403, f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                               "Forbidden", {"name": name, "kind": "namespaces"})
            if _is_namespace(rt) and obj["metadata"].get("deletionTimestamp"):
                # kube-apiserver's namespace storage: a second delete while the namespace controller
                # still holds its "kubernetes" finalizer is refused, not repeated.
                raise ApiError(409, f'Operation cannot be fulfilled on namespaces "{name}": The system is ensuring '
                                    f'all content is removed from this namespace.  Upon completion, this namespace '
                                    f'will automatically be purged by the system.', "Conflict", _details(rt, name))
            dry = query.get("dryRun") == "All" or (options or {}).get("dryRun") == ["All"]
            if dry:
                return self._present(rt, obj)
            return self._present(rt, self._delete(rt, key))

    def _delete(self, rt: ResType, key) -> dict:
        obj = self.objects[key]
        if obj["metadata"].get("finalizers"):
            if obj["metadata"].get("deletionTimestamp"):
                return obj
            new = _clone(obj)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._commit(rt, key, new, "MODIFIED", obj)
        if _is_namespace(rt):
            # Terminating until the namespace controller has emptied it and removed its "kubernetes"
            # finalizer (spec.finalizers), which takes namespace_delete_delay seconds here.
            if obj["metadata"].get("deletionTimestamp"):
                return obj
            terminating = _clone(obj)
            terminating["metadata"]["deletionTimestamp"] = now_rfc3339()
            terminating["metadata"]["deletionGracePeriodSeconds"] = 0
            terminating.setdefault("status", {})["phase"] = "Terminating"
            committed = self._commit(rt, key, terminating, "MODIFIED", obj)
            self._schedule(self.namespace_delete_delay, self._finalize_namespace, key, obj["metadata"]["uid"])
            return committed
        gone = self._commit(rt, key, _clone(obj), "DELETED", obj)
        self._after_delete(rt, key, gone)
        return gone

    def _finalize_namespace(self, key, uid: str):
        """The namespace controller: delete everything in the namespace, then the namespace itself."""
        obj = self.objects.get(key)
        if obj is None or obj["metadata"].get("uid") != uid:
            return
        held = False
        for child in sorted(k for k in self.objects if k[2] == key[3] and k[1] != "namespaces"):
            if child not in self.objects:
                continue
            if self.objects[child]["metadata"].get("finalizers"):
                # Deleted, but it stays (and the namespace with it) until its finalizers are removed.
                self._delete(self._type_of_key(child), child)
                held = True
            else:
                self._force_delete(self._type_of_key(child), child)
        if held:
            self._schedule(0.1, self._finalize_namespace, key, uid)
            return
        rt = self.lookup("", "v1", "namespaces")
        final = _clone(self.objects[key])
        final["spec"]["finalizers"] = []
        gone = self._commit(rt, key, final, "DELETED", obj)
        self._after_delete(rt, key, gone)

    def _force_delete(self, rt: ResType | None, key):
        obj = self.objects.get(key)
        if obj is None:
            return
        gone = self._commit(rt, key, _clone(obj), "DELETED", obj)
        if rt is not None:
            self._after_delete(rt, key, gone)

    def _type_of_key(self, key) -> ResType | None:
        for t in self.all_types():
            if (t.group, t.plural) == key[:2]:
                return t
        return None

    def delete_collection(self, rt: ResType, ns: str | None, query: dict) -> dict:
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), rt)
        with self.lock:
            chosen = self._select(rt, ns, labels, fields)
            out = []
            for key, obj in chosen:
                if rt.plural == "namespaces" and not rt.group and key[3] in IMMORTAL_NAMESPACES:
                    continue
                if query.get("dryRun") == "All":
                    out.append(self._present(rt, obj))
                elif key in self.objects:
                    out.append(self._present(rt, self._delete(rt, key)))
            return {"kind": rt.list_kind, "apiVersion": rt.api_version,
                    "metadata": {"resourceVersion": str(self.rv)}, "items": out}

    # -- admission: defaults and server-set fields ----------------------------------------------

    def _admit(self, rt: ResType, obj: dict, old: dict | None):
        meta = obj["metadata"]
        if rt.group == "" and rt.plural == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta.get("name", "")
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            if old is None:
                obj["status"] = {"phase": "Active"}
        elif rt.group == "" and rt.plural == "secrets":
            self._admit_secret(obj, old)
        elif rt.group == "" and rt.plural == "services":
            self._admit_service(obj, old)
        elif rt.group == "apps" and rt.plural == "deployments":
            spec = obj.setdefault("spec", {})
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            strategy = spec.setdefault("strategy", {})
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                strategy.setdefault("rollingUpdate", {"maxSurge": "25%", "maxUnavailable": "25%"})
            self._default_pod_spec(spec.get("template", {}).get("spec"))
            if old is None:
                obj.pop("status", None)
        elif rt.group == "" and rt.plural == "pods":
            self._default_pod_spec(obj.get("spec"))
            if old is None:
                configured = self._inject_sidecar(obj)
                obj["status"] = self._pod_status(obj, configured)
        elif rt.group == "apiextensions.k8s.io" and rt.plural == "customresourcedefinitions":
            spec = obj.setdefault("spec", {})
            names = spec.setdefault("names", {})
            if names.get("kind"):
                names.setdefault("singular", names["kind"].lower())
                names.setdefault("listKind", names["kind"] + "List")
            if old is None or "status" not in obj:
                storage = [v.get("name") for v in spec.get("versions", []) if v.get("storage")]
                obj["status"] = {
                    "acceptedNames": _clone(names),
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                         "message": "no conflicts found", "lastTransitionTime": now_rfc3339()},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                         "message": "the initial names have been accepted", "lastTransitionTime": now_rfc3339()},
                    ],
                    "storedVersions": storage,
                }
            spec.setdefault("conversion", {"strategy": "None"})

    def _default_pod_spec(self, spec):
        if not isinstance(spec, dict):
            return
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("securityContext", {})
        for field in CONTAINER_LISTS:
            for c in spec.get(field) or []:
                if not isinstance(c, dict):
                    continue
                image = str(c.get("image", ""))
                tag = image.rsplit("/", 1)[-1]
                latest = ":" not in tag or tag.endswith(":latest")
                c.setdefault("imagePullPolicy", "Always" if latest and "@" not in image else "IfNotPresent")
                c.setdefault("terminationMessagePath", "/dev/termination-log")
                c.setdefault("terminationMessagePolicy", "File")
                for p in c.get("ports") or []:
                    if isinstance(p, dict):
                        p.setdefault("protocol", "TCP")

    def _admit_secret(self, obj: dict, old: dict | None):
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None)
        if isinstance(string_data, dict):
            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()
        meta = obj["metadata"]
        if obj.get("type") == "kubernetes.io/service-account-token":
            sa = (meta.get("annotations") or {}).get("kubernetes.io/service-account.name")
            data = obj.setdefault("data", {}) or {}
            obj["data"] = data
            if sa and not data.get("token"):
                data["token"] = base64.b64encode(self._issue_jwt(meta.get("namespace", ""), sa).encode()).decode()
            if sa:
                data.setdefault("ca.crt", base64.b64encode(self.ca_pem.encode()).decode())
                data.setdefault("namespace", base64.b64encode(meta.get("namespace", "").encode()).decode())

    def _issue_jwt(self, ns: str, sa: str) -> str:
        header = {"alg": "RS256", "kid": hashlib.sha256(self.name.encode()).hexdigest()[:43]}
        payload = {"iss": "kubernetes/serviceaccount", "kubernetes.io/serviceaccount/namespace": ns,
                   "kubernetes.io/serviceaccount/service-account.name": sa,
                   "sub": f"system:serviceaccount:{ns}:{sa}", "iat": int(time.time()),
                   "jti": str(uuid.uuid4())}
        return ".".join([_b64url(json.dumps(header, separators=(",", ":")).encode()),
                         _b64url(json.dumps(payload, separators=(",", ":")).encode()),
                         _b64url(pysecrets.token_bytes(64))])

    def _admit_service(self, obj: dict, old: dict | None):
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        old_spec = (old or {}).get("spec", {})
        if spec["type"] != "ExternalName":
            spec.setdefault("sessionAffinity", "None")
            spec.setdefault("internalTrafficPolicy", "Cluster")
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        if spec["type"] in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        if spec["type"] == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        old_ports = {p.get("port"): p for p in old_spec.get("ports") or [] if isinstance(p, dict)}
        for p in spec.get("ports") or []:
            if not isinstance(p, dict):
                continue
            p.setdefault("protocol", "TCP")
            if "targetPort" not in p and "port" in p:
                p["targetPort"] = p["port"]
            if spec["type"] in ("NodePort", "LoadBalancer") and "nodePort" not in p:
                prev = old_ports.get(p.get("port"), {})
                if "nodePort" in prev:
                    p["nodePort"] = prev["nodePort"]
        if old is not None:
            for field in ("clusterIP", "clusterIPs"):
                if field not in spec and field in old_spec and spec["type"] != "ExternalName":
                    spec[field] = _clone(old_spec[field])
            if spec["type"] not in ("NodePort", "LoadBalancer") and old_spec.get("type") in ("NodePort",
                                                                                          "LoadBalancer"):
                for p in spec.get("ports") or []:  # like the real server: allocations go with the old type
                    if isinstance(p, dict):
                        p.pop("nodePort", None)
                for field in ("externalTrafficPolicy", "allocateLoadBalancerNodePorts"):
                    spec.pop(field, None)
            if spec["type"] == "ExternalName" and old_spec.get("type") != "ExternalName":
                for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy"):
                    spec.pop(field, None)
        if old is None:
            obj["status"] = {"loadBalancer": {}}

    def _allocate(self, rt: ResType, obj: dict, old: dict | None):
        if rt.group == "" and rt.plural == "services":
            spec = obj["spec"]
            if old is not None:  # an update keeps what was allocated, as kube-apiserver does
                old_spec = old.get("spec") or {}
                if not spec.get("clusterIP") and old_spec.get("clusterIP") and spec.get("type") != "ExternalName":
                    spec["clusterIP"] = old_spec["clusterIP"]
                    spec["clusterIPs"] = list(old_spec.get("clusterIPs") or [old_spec["clusterIP"]])
                old_ports = {(p.get("port"), p.get("protocol", "TCP")): p for p in old_spec.get("ports") or []
                             if isinstance(p, dict)}
                for p in spec.get("ports") or []:
                    before = old_ports.get((p.get("port"), p.get("protocol", "TCP"))) if isinstance(p, dict) else None
                    if before and "nodePort" in before and "nodePort" not in p:
                        p["nodePort"] = before["nodePort"]
            if spec.get("type") != "ExternalName" and not spec.get("clusterIP"):
                ip = f"10.96.{self.next_cluster_ip // 250}.{self.next_cluster_ip % 250 + 1}"
                self.next_cluster_ip += 1
                spec["clusterIP"] = ip
                spec["clusterIPs"] = [ip]
            elif spec.get("clusterIP") and "clusterIPs" not in spec:
                spec["clusterIPs"] = [spec["clusterIP"]]
            if spec.get("type") in ("NodePort", "LoadBalancer"):
                for p in spec.get("ports") or []:
                    if isinstance(p, dict) and "nodePort" not in p:
                        p["nodePort"] = self.next_node_port
                        self.next_node_port += 1

    # -- validation ----------------------------------------------------------------------------

    def _validate(self, rt: ResType, obj: dict, old: dict | None = None):
        errs = Invalid()
        meta = obj.get("metadata", {})
        name = meta.get("name", "")
        if not name:
            errs.required("metadata.name", "name or generateName is required")
        else:
            # Names as kube-apiserver validates them (k8s.io/kubernetes pkg/apis/core/validation:
            # ValidateNamespaceName is a DNS-1123 label, ValidateServiceName a DNS-1035 label, both at most 63
            # characters; pkg/apis/rbac/validation: ValidateRBACName checks only path segments; most other
            # kinds: a DNS-1123 subdomain of at most 253, k8s.io/apimachinery/pkg/util/validation).
            if rt.group == "" and rt.plural in ("namespaces",):
                pattern, msg, limit = DNS1123_LABEL, MSG_LABEL, 63
            elif rt.group == "" and rt.plural == "services":
                pattern, msg, limit = DNS1035_LABEL, MSG_DNS1035, 63
            elif rt.group == "rbac.authorization.k8s.io":
                pattern, msg, limit = None, None, 0
            else:
                pattern, msg, limit = DNS1123_SUBDOMAIN, MSG_SUBDOMAIN, 253
            if pattern is not None:
                if len(name) > limit:
                    errs.invalid_value("metadata.name", name, f"must be no more than {limit} characters")
                elif not pattern.match(name):
                    errs.invalid_value("metadata.name", name, msg)
            elif "/" in name or name in (".", "..") or "%" in name:
                errs.invalid_value("metadata.name", name, "may not contain '/'")
        # Labels and annotations as apimachinery's ValidateLabels (IsQualifiedName keys, IsValidLabelValue values:
        # at most 63 characters) and ValidateAnnotations (qualified keys, 256 KiB in all) check them.
        for key, value in (meta.get("labels") or {}).items():
            _validate_qualified(errs, "metadata.labels", key)
            if not isinstance(value, str):
                errs.invalid_value("metadata.labels", value, "label values must be strings")
            elif len(value) > 63:
                errs.invalid_value("metadata.labels", value, "must be no more than 63 characters")
            elif not LABEL_VALUE.match(value):
                errs.invalid_value("metadata.labels", value, MSG_LABEL_VALUE)
        annotations = meta.get("annotations") or {}
        total = 0
        for key, value in annotations.items():
            _validate_qualified(errs, "metadata.annotations", key)
            if not isinstance(value, str):
                errs.invalid_value("metadata.annotations", value, "annotation values must be strings")
            else:
                total += len(key) + len(value)
        if total > 262144:
            errs.add("metadata.annotations", "metadata.annotations: Too long: must have at most 262144 bytes",
                     "FieldValueTooLong")
        if errs.causes:
            raise errs.error(rt.kind, name)
        check = getattr(self, f"_validate_{rt.kind.lower()}", None)
        if check and not rt.crd:
            check(errs, obj, old)
        elif rt.crd:
            self._validate_custom(errs, rt, obj)
        if errs.causes:
            raise errs.error(rt.kind, name)

    def _validate_secret(self, errs: Invalid, obj: dict, old: dict | None):
        data = obj.get("data") or {}
        if not isinstance(data, dict):
            raise ApiError(400, 'Secret in version "v1" cannot be handled as a Secret: json: cannot unmarshal '
                                'into Go struct field Secret.data of type map[string][]uint8')
        size = 0
        for key, value in data.items():
            problem = _b64_error(value)
            if problem:
                raise ApiError(400, f'Secret in version "v1" cannot be handled as a Secret: {problem}',
                               "BadRequest")
            if not CONFIG_KEY.match(key):
                errs.invalid_value(f"data[{key}]", key, MSG_CONFIG_KEY)
            size += len(base64.b64decode(value))
        if size > 1048576:
            errs.add("data", "data: Too long: must have at most 1048576 bytes", "FieldValueTooLong")
        if obj.get("type") == "kubernetes.io/service-account-token":
            sa = (obj["metadata"].get("annotations") or {}).get("kubernetes.io/service-account.name")
            if not sa:
                errs.required("metadata.annotations[kubernetes.io/service-account.name]")
        if old is not None:
            if old.get("type") != obj.get("type"):
                errs.invalid_value("type", obj.get("type"), "field is immutable")
            if old.get("immutable") and (old.get("data") != obj.get("data") or not obj.get("immutable")):
                errs.add("data", "data: Forbidden: field is immutable when `immutable` is set", "FieldValueForbidden")

    def _validate_configmap(self, errs: Invalid, obj: dict, old: dict | None):
        for field in ("data", "binaryData"):
            values = obj.get(field) or {}
            if not isinstance(values, dict):
                raise ApiError(400, f'ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot '
                                    f'unmarshal into Go struct field ConfigMap.{field}')
            for key, value in values.items():
                if not CONFIG_KEY.match(key):
                    errs.invalid_value(f"{field}[{key}]", key, MSG_CONFIG_KEY)
                if field == "data" and not isinstance(value, str):
                    raise ApiError(400, 'ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot '
                                        'unmarshal number into Go struct field ConfigMap.data of type string')
                if field == "binaryData" and _b64_error(value):
                    raise ApiError(400, f'ConfigMap in version "v1" cannot be handled as a ConfigMap: '
                                        f'{_b64_error(value)}')
        if old is not None and old.get("immutable") and (old.get("data") != obj.get("data")):
            errs.add("data", "data: Forbidden: field is immutable when `immutable` is set", "FieldValueForbidden")

    def _validate_service(self, errs: Invalid, obj: dict, old: dict | None):
        spec = obj.get("spec") or {}
        allowed = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]
        if spec.get("type") not in allowed:
            errs.unsupported("spec.type", spec.get("type"), allowed)
        names = set()
        for i, p in enumerate(spec.get("ports") or []):
            if not isinstance(p, dict):
                errs.invalid_value(f"spec.ports[{i}]", p, "must be an object")
                continue
            port = p.get("port")
            if not isinstance(port, int) or not 1 <= port <= 65535:
                errs.invalid_value(f"spec.ports[{i}].port", port, "must be between 1 and 65535, inclusive")
            if len(spec.get("ports")) > 1 and not p.get("name"):
                errs.required(f"spec.ports[{i}].name")
            if p.get("name") in names:
                errs.add(f"spec.ports[{i}].name", f"spec.ports[{i}].name: Duplicate value: "
                                                  f"{json.dumps(p.get('name'))}", "FieldValueDuplicate")
            names.add(p.get("name"))
            if p.get("protocol") not in ("TCP", "UDP", "SCTP"):
                errs.unsupported(f"spec.ports[{i}].protocol", p.get("protocol"), ["SCTP", "TCP", "UDP"])
        if not spec.get("ports") and spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None":
            errs.required("spec.ports")
        if old is not None:
            old_ip = (old.get("spec") or {}).get("clusterIP")
            if old_ip and spec.get("clusterIP") and spec["clusterIP"] != old_ip and spec.get("type") != "ExternalName":
                errs.invalid_value("spec.clusterIPs[0]", spec["clusterIP"], "may not change once set")

    def _validate_deployment(self, errs: Invalid, obj: dict, old: dict | None):
        spec = obj.get("spec") or {}
        selector = spec.get("selector")
        template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        if not selector:
            errs.required("spec.selector")
        else:
            match = selector.get("matchLabels") or {}
            if not match and not selector.get("matchExpressions"):
                errs.invalid_value("spec.selector", selector, "empty selector is invalid for deployment")
            elif any(template_labels.get(k) != v for k, v in match.items()):
                errs.invalid_value("spec.template.metadata.labels", template_labels,
                                   "`selector` does not match template `labels`")
        if not ((spec.get("template") or {}).get("spec") or {}).get("containers"):
            errs.required("spec.template.spec.containers")
        replicas = spec.get("replicas", 1)
        if not isinstance(replicas, int) or replicas < 0:
            errs.invalid_value("spec.replicas", replicas, "must be greater than or equal to 0")
        if old is not None and selector and (old.get("spec") or {}).get("selector") != selector:
            errs.invalid_value("spec.selector", selector, "field is immutable")

    def _validate_namespace(self, errs: Invalid, obj: dict, old: dict | None):
        pass

    def _validate_customresourcedefinition(self, errs: Invalid, obj: dict, old: dict | None):
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        group = spec.get("group", "")
        if not group:
            errs.required("spec.group")
        elif "." not in group:
            errs.invalid_value("spec.group", group, "should be a domain with at least one dot")
        if not names.get("plural"):
            errs.required("spec.names.plural")
        if not names.get("kind"):
            errs.required("spec.names.kind")
        scope = spec.get("scope")
        if scope not in ("Namespaced", "Cluster"):
            errs.unsupported("spec.scope", scope, ["Cluster", "Namespaced"])
        versions = spec.get("versions") or []
        if not versions:
            errs.required("spec.versions", "must have exactly one version marked as storage version")
        elif sum(1 for v in versions if v.get("storage")) != 1:
            errs.invalid_value("spec.versions", [v.get("name") for v in versions],
                               "must have exactly one version marked as storage version")
        if names.get("plural") and group and obj["metadata"].get("name") != f"{names['plural']}.{group}":
            errs.invalid_value("metadata.name", obj["metadata"].get("name"),
                               'must be spec.names.plural+"."+spec.group')
        if old is not None:
            old_spec = old.get("spec") or {}
            if old_spec.get("group") != group:
                errs.invalid_value("spec.group", group, "field is immutable")
            if old_spec.get("scope") != scope:
                errs.invalid_value("spec.scope", scope, "field is immutable")
        for other_key, other in self.objects.items():
            if other_key[:2] != ("apiextensions.k8s.io", "customresourcedefinitions"):
                continue
            if other_key[3] == obj["metadata"].get("name"):
                continue
            ospec = other.get("spec") or {}
            if ospec.get("group") == group and (ospec.get("names") or {}).get("kind") == names.get("kind"):
                errs.invalid_value("spec.names.kind", names.get("kind"),
                                   f"kind is already in use by {other_key[3]}")

    def _validate_custom(self, errs: Invalid, rt: ResType, obj: dict):
        crd = self.objects.get(("apiextensions.k8s.io", "customresourcedefinitions", "", rt.crd))
        if not crd:
            return
        for v in crd.get("spec", {}).get("versions", []):
            if v.get("name") != rt.version:
                continue
            schema = (v.get("schema") or {}).get("openAPIV3Schema") or {}
            _check_schema(errs, schema, obj, "", top=True)

    # -- controllers ---------------------------------------------------------------------------

    def _after_write(self, rt: ResType, key, old: dict | None, obj: dict):
        group, plural = rt.group, rt.plural
        if group == "" and plural == "namespaces" and old is None:
            ns = key[3]
            self._create(self.lookup("", "v1", "serviceaccounts"), ns, {
                "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}, {})
            self._create(self.lookup("", "v1", "configmaps"), ns, {
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                    "name": "kube-root-ca.crt",
                    "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify "
                                                                 "the kube-apiserver when using internal endpoints "
                                                                 "such as the internal service IP or "
                                                                 "kubernetes.default.svc. No other usage is "
                                                                 "guaranteed across distributions of Kubernetes "
                                                                 "clusters."}},
                "data": {"ca.crt": self.ca_pem}}, {})
        elif group == "" and plural == "secrets":
            self._index_token(key, obj)
        elif group == "" and plural == "services":
            self._service_controller(rt, key, obj)
        elif group == "apps" and plural == "deployments":
            self._replicate_pods(key, obj)  # first: readiness is counted from the pods
            self._deployment_controller(rt, key, obj)
        elif group == "apps" and plural == "daemonsets":
            self._daemonset_controller(rt, key, obj)
        elif group == "apiextensions.k8s.io" and plural == "customresourcedefinitions":
            self._rebuild_crd_types()
            if old is not None:
                self._prune_custom_objects()
        if gatewaycontroller.watches(group, plural):
            self._gateway_controller_soon()
        if (group, plural) == ("admissionregistration.k8s.io", "mutatingwebhookconfigurations") or (
                (group, plural) == ("", "pods") and key[2] == meshmodel.ISTIO_NS):
            self._patch_injectors_soon()  # istiod patches its webhooks once it runs, and again when reset
        if istiodca.watches(group, plural):  # istiod's CA: the roots it holds and publishes
            istiodca.on_write(self, rt, key, old, obj)

    def _after_delete(self, rt: ResType, key, obj: dict):
        self._collect_garbage(obj["metadata"].get("uid"))
        if istiodca.watches(rt.group, rt.plural):
            istiodca.on_delete(self, rt, key, obj)
        if gatewaycontroller.watches(rt.group, rt.plural):
            self._gateway_controller_soon()
        if rt.group == "" and rt.plural == "secrets":
            for tok in [t for t, ref in self.tokens.items() if ref == key]:
                del self.tokens[tok]
        if rt.group == "apps" and rt.plural == "deployments":
            self._replicate_pods(key, None, obj["metadata"].get("uid"))
        if rt.group == "apiextensions.k8s.io" and rt.plural == "customresourcedefinitions":
            spec = obj.get("spec", {})
            target = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
            for child in sorted(k for k in self.objects if k[:2] == target):
                self._force_delete(self._type_of_key(child), child)
            self._rebuild_crd_types()

    def _prune_custom_objects(self):
        served = {(t.group, t.plural) for t in self.crd_types.values()}
        crd_targets = set()
        for key, crd in self.objects.items():
            if key[:2] == ("apiextensions.k8s.io", "customresourcedefinitions"):
                spec = crd.get("spec", {})
                crd_targets.add((spec.get("group", ""), (spec.get("names") or {}).get("plural", "")))
        builtin = {(t.group, t.plural) for t in self.builtin}
        for key in sorted(self.objects):
            if key[:2] not in builtin and key[:2] not in crd_targets and key[:2] not in served:
                self._force_delete(None, key)

    def _index_token(self, key, obj: dict):
        for tok in [t for t, ref in self.tokens.items() if ref == key]:
            del self.tokens[tok]
        if obj.get("type") == "kubernetes.io/service-account-token":
            raw = (obj.get("data") or {}).get("token")
            if raw:
                try:
                    self.tokens[base64.b64decode(raw).decode()] = key
                except (binascii.Error, UnicodeDecodeError):
                    pass

    def issue_token_request(self, ns: str, sa_name: str, body) -> dict:
        with self.lock:
            sa_key = ("", "serviceaccounts", ns, sa_name)
            if sa_key not in self.objects:
                raise not_found(self.lookup("", "v1", "serviceaccounts"), sa_name)
            spec = (body or {}).get("spec") or {}
            seconds = int(spec.get("expirationSeconds") or 3600)
            tok = self._issue_jwt(ns, sa_name)
            self.tokens[tok] = sa_key
            expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))
            return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": None},
                    "spec": {"audiences": spec.get("audiences") or ["https://kubernetes.default.svc.cluster.local"],
                             "expirationSeconds": seconds, "boundObjectRef": spec.get("boundObjectRef")},
                    "status": {"token": tok, "expirationTimestamp": expiry}}

    def _service_controller(self, rt: ResType, key, obj: dict):
        spec = obj.get("spec", {})
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        if spec.get("type") == "LoadBalancer":
            if ingress or self.lb_delay is None:
                return
            if self.lb_delay <= 0:
                self._assign_lb(key, obj["metadata"]["uid"])
            else:
                self._schedule(self.lb_delay, self._assign_lb, key, obj["metadata"]["uid"])
        elif ingress:
            new = _clone(obj)
            new["status"]["loadBalancer"] = {}
            self._commit(rt, key, new, "MODIFIED", obj)

    def _assign_lb(self, key, uid: str):
        obj = self.objects.get(key)
        if obj is None or obj["metadata"].get("uid") != uid or obj.get("spec", {}).get("type") != "LoadBalancer":
            return
        if ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
            return
        ip = f"{LB_PREFIX}{self.next_lb_ip}"
        self.next_lb_ip = self.next_lb_ip + 1 if self.next_lb_ip < 254 else 1
        new = _clone(obj)
        new.setdefault("status", {})["loadBalancer"] = {"ingress": [{"ip": ip, "ipMode": "VIP"}]}
        self._commit(self.lookup("", "v1", "services"), key, new, "MODIFIED", obj)
        self._gateway_controller_soon()

    def _gateway_controller_soon(self):
        """istiod's gateway controllers react shortly after a write, not within it."""
        if not self.gateway_reconcile_pending:
            self.gateway_reconcile_pending = True
            self._schedule(0.0, self._run_gateway_controller)

    def _run_gateway_controller(self):
        with self.lock:
            self.gateway_reconcile_pending = False
            gatewaycontroller.reconcile(self)

    def _collect_garbage(self, owner_uid: str | None):
        """The garbage collector (background propagation): an object whose owners are all gone follows
        them, e.g. the Deployment and Service istiod made for a Gateway."""
        if not owner_uid:
            return
        dependents = [k for k, o in self.objects.items() if any(
            ref.get("uid") == owner_uid for ref in o["metadata"].get("ownerReferences") or [])]
        if not dependents:
            return
        live = {o["metadata"].get("uid") for o in self.objects.values()}
        for key in sorted(dependents):
            obj = self.objects.get(key)
            if obj is not None and not any(ref.get("uid") in live
                                           for ref in obj["metadata"].get("ownerReferences") or []):
                self._delete(self._type_of_key(key), key)

    def _deployment_controller(self, rt: ResType, key, obj: dict, started: bool = False):
        spec = obj.get("spec", {})
        replicas = int(spec.get("replicas", 1) or 0)
        status = {"observedGeneration": obj["metadata"].get("generation", 1)}
        if key in self.replica_failures and replicas:
            self._deployment_failed(rt, key, obj, status, replicas)
            return
        started = started or "readyReplicas" in (obj.get("status") or {})
        if replicas and self.ready_delay > 0 and not started:
            # New pods take a while to start; a rolling update keeps the old ones ready meanwhile.
            self._deployment_unready(rt, key, obj, status, replicas)
            return
        ready = min(replicas, self._ready_pods(key, obj))
        if ready < replicas - replicas // 4:  # the default maxUnavailable: 25%, rounded down
            # A pod that never gets ready (an image that cannot be pulled) keeps the Deployment unavailable.
            status.update({"replicas": replicas, "updatedReplicas": replicas, "unavailableReplicas": replicas - ready})
            if ready:
                status.update({"readyReplicas": ready, "availableReplicas": ready})
            self._commit_unavailable(rt, key, obj, status, "ReplicaSetUpdated", "is progressing")
            return
        if replicas:
            status.update({"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready,
                           "availableReplicas": ready})
            if ready < replicas:
                status["unavailableReplicas"] = replicas - ready
        stamp = now_rfc3339()
        status["conditions"] = [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability.", "lastUpdateTime": stamp, "lastTransitionTime": stamp},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": f'ReplicaSet "{key[3]}-{hashlib.sha1(key[3].encode()).hexdigest()[:10]}" has successfully '
                        "progressed.", "lastUpdateTime": stamp, "lastTransitionTime": stamp},
        ]
        old_status = obj.get("status") or {}
        comparable = {k: v for k, v in old_status.items() if k != "conditions"}
        if comparable == {k: v for k, v in status.items() if k != "conditions"} and old_status.get("conditions"):
            return
        new = _clone(obj)
        new["status"] = status
        self._commit(rt, key, new, "MODIFIED", obj)

    def _daemonset_controller(self, rt: ResType, key, obj: dict):
        """One pod per node, ready at once: the cluster has a single node."""
        nodes = sum(1 for k in self.objects if k[:2] == ("", "nodes"))
        status = {"currentNumberScheduled": nodes, "desiredNumberScheduled": nodes, "numberAvailable": nodes,
                  "numberMisscheduled": 0, "numberReady": nodes, "updatedNumberScheduled": nodes,
                  "observedGeneration": obj["metadata"].get("generation", 1)}
        if obj.get("status") == status:
            return
        new = _clone(obj)
        new["status"] = status
        self._commit(rt, key, new, "MODIFIED", obj)

    # -- pods: what the ReplicaSet controller, the scheduler, the kubelet and Istio's injector do ------

    def _replicate_pods(self, key, deployment: dict | None, deleted_uid: str | None = None, injection=None):
        """Keeps ``spec.replicas`` pods of the current template per Deployment; none once it is deleted.
        In a namespace of the mesh, Istio's injector decides first (``injection``: its verdict, when the
        network had to be asked; see meshmodel.py).

        Simplified: the pods are owned by the Deployment itself (no ReplicaSet objects).
        """
        ns = key[2]
        uid = deployment["metadata"]["uid"] if deployment else deleted_uid
        if deployment is None:
            self.mesh_replicate.pop(key, None)
            self.replica_failures.pop(key, None)
        pod_rt = self.lookup("", "v1", "pods")
        owned = [k for k, o in self.objects.items() if k[:3] == ("", "pods", ns) and any(
            ref.get("uid") == uid for ref in (o["metadata"].get("ownerReferences") or []))]
        if deployment is None:
            for k in sorted(owned):
                self._force_delete(pod_rt, k)
            return
        spec = deployment.get("spec") or {}
        template = spec.get("template") or {}
        digest = hashlib.sha1(json.dumps(template, sort_keys=True).encode()).hexdigest()
        alphabet = "bcdfghjklmnpqrstvwxz2456789"
        template_hash = "".join(alphabet[int(digest[i:i + 2], 16) % len(alphabet)] for i in range(0, 20, 2))
        replicas = int(spec.get("replicas", 1) or 0)
        keep, old = [], []
        for k in sorted(owned):
            labels = self.objects[k]["metadata"].get("labels") or {}
            if labels.get("pod-template-hash") == template_hash and len(keep) < replicas:
                keep.append(k)
            elif labels.get("pod-template-hash") == template_hash:
                self._force_delete(pod_rt, k)
            else:
                old.append(k)
        missing = replicas - len(keep)
        if missing > 0 and injection is None:
            view = meshmodel.View(self.name, self.objects)
            pod_labels = (template.get("metadata") or {}).get("labels") or {}
            if view.injector(ns, pod_labels) is not None:
                if not meshmodel.decided_locally(view, ns, pod_labels):
                    # The injector's istiod is elsewhere: ask the network outside the lock, then create.
                    self.mesh_replicate[key] = uid
                    self.mesh_wake.set()
                    return
                injection = meshmodel.injection(view, ns, None, pod_labels)
        if missing > 0 and injection is not None and not injection.admitted:
            # The API server refuses every pod (failurePolicy: Fail); the ReplicaSet controller retries.
            self._replica_failure(key, injection.error)
            self.mesh_replicate[key] = uid
            return
        if key in self.replica_failures:
            self._replica_failure(key, None)
        for _ in range(missing):
            name = f"{key[3]}-{template_hash}-" + "".join(pysecrets.choice(alphabet) for _ in range(5))
            meta = _clone(template.get("metadata") or {})
            meta.update({"name": name, "namespace": ns})
            meta["labels"] = {**(meta.get("labels") or {}), "pod-template-hash": template_hash}
            meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": key[3], "uid": uid,
                                        "controller": True, "blockOwnerDeletion": True}]
            body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                    "spec": _clone(template.get("spec") or {})}
            body["spec"]["nodeName"] = f"{_node_name(self.name)}-control-plane"
            self.pod_injection = injection
            try:
                self._create(pod_rt, ns, body, {})
                keep.append(self._key(pod_rt, ns, name))
            except ApiError:  # e.g. the namespace is being deleted
                return
            finally:
                self.pod_injection = None
        # A rolling update: the old pods serve until the new ones are ready (an image that cannot be
        # pulled leaves the rollout stuck with the old pods running, as maxUnavailable 25% keeps them).
        new_ready = sum(_pod_is_ready(self.objects.get(k)) for k in keep)
        if new_ready >= replicas - replicas // 4 or not replicas:
            for k in old:
                self._force_delete(pod_rt, k)

    def _inject_sidecar(self, pod: dict) -> bool:
        """Istio's injector, as its webhook selects namespaces: one istio-proxy container is added.
        Returns whether that sidecar is configured at once (else it waits for the mesh agent; True when no
        sidecar was added). A pod created directly is refused when the injector's istiod, in this cluster,
        does not answer; one whose istiod is elsewhere is admitted and waits (only the network can tell)."""
        ns = pod["metadata"].get("namespace", "")
        spec = pod.setdefault("spec", {})
        view = meshmodel.View(self.name, self.objects)
        pod_labels = pod["metadata"].get("labels") or {}
        annotations = pod["metadata"].get("annotations") or {}
        if view.injector(ns, pod_labels) is None or "sidecar.istio.io/status" in annotations:
            return True
        injection = self.pod_injection
        if injection is None and meshmodel.decided_locally(view, ns, pod_labels):
            injection = meshmodel.injection(view, ns, None, pod_labels)
            if not injection.admitted:
                raise ApiError(500, injection.error, "InternalError")
        revision, version = meshmodel.injector_revision(view, view.injector(ns, pod_labels)[0])
        image = f"docker.io/istio/proxyv2:{version}"
        proxy = next((c for c in spec.get("containers") or [] if c.get("name") == "istio-proxy"), None)
        if proxy is not None:
            # A gateway rendered for injection (inject.istio.io/templates: gateway) already names the container
            # istio-proxy with image "auto": the gateway template fills it in rather than adding a sidecar.
            proxy.update({"image": image, "args": ["proxy", "router"]})
        else:
            spec.setdefault("containers", []).append({
                "name": "istio-proxy", "image": image, "args": ["proxy", "sidecar"],
                "imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File"})
        # files/injection-template.yaml (1.30.3): the pod is annotated istio.io/rev with the injecting revision,
        # which the status annotation also names
        annotations = pod["metadata"].setdefault("annotations", {})
        annotations["istio.io/rev"] = revision
        annotations["sidecar.istio.io/status"] = json.dumps(
            {"containers": ["istio-proxy"], "revision": revision}, separators=(",", ":"))
        return injection is not None and injection.configured

    def _pod_status(self, pod: dict, configured: bool = True) -> dict:
        """Running and ready, unless an image cannot be pulled: registries under the reserved .invalid
        domain never resolve, so their images stay in ImagePullBackOff. An injected istio-proxy runs but
        is ready only once its control plane configures it (``configured``; checked again meanwhile). A
        container that exits at start (istiodca.start_failure) stays in CrashLoopBackOff."""
        containers = (pod.get("spec") or {}).get("containers") or []
        statuses, unready = [], []
        waiting = False
        for c in containers:
            image = str(c.get("image", ""))
            first = image.split("/", 1)[0] if "/" in image else ""
            registry = first.split(":", 1)[0].lower() if ("." in first or ":" in first) else "docker.io"
            if c.get("name") == "istio-proxy" and not configured:
                unready.append(c.get("name", ""))
                statuses.append({"name": c.get("name"), "image": image, "imageID": "", "ready": False,
                                 "restartCount": 0, "started": True,
                                 "state": {"running": {"startedAt": now_rfc3339()}}})
                self.mesh_waiting.add(("", "pods", pod["metadata"].get("namespace", ""), pod["metadata"]["name"]))
            elif (failure := istiodca.start_failure(self, pod, c)) is not None:
                unready.append(c.get("name", ""))
                statuses.append({"name": c.get("name"), "image": image, "imageID": "", "ready": False,
                                 "restartCount": 1, "started": False,
                                 "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s "
                                                       f"restarting failed container={c.get('name')}"}},
                                 "lastState": {"terminated": {"exitCode": 255, "reason": "Error", "message": failure}}})
            elif registry.endswith(".invalid"):
                waiting = True
                unready.append(c.get("name", ""))
                statuses.append({"name": c.get("name"), "image": image, "imageID": "", "ready": False,
                                 "restartCount": 0, "started": False, "state": {"waiting": {
                                     "reason": "ImagePullBackOff",
                                     "message": f'Back-off pulling image "{image}": ErrImagePull: failed to pull '
                                                f'and unpack image "{image}": failed to resolve reference '
                                                f'"{image}": dial tcp: lookup {registry}: no such host'}}})
            else:
                statuses.append({"name": c.get("name"), "image": image, "imageID": "", "ready": True,
                                 "restartCount": 0, "started": True,
                                 "state": {"running": {"startedAt": now_rfc3339()}}})
        ready = "False" if unready else "True"
        conditions = [{"type": "PodScheduled", "status": "True"}, {"type": "Initialized", "status": "True"},
                      {"type": "ContainersReady", "status": ready}, {"type": "Ready", "status": ready}]
        if unready:
            for cond in conditions[2:]:
                cond.update({"reason": "ContainersNotReady",
                             "message": f"containers with unready status: [{' '.join(unready)}]"})
        return {"phase": "Pending" if waiting else "Running", "conditions": conditions,
                "podIP": "10.244.0." + str(len(self.objects) % 250 + 2), "hostIP": NODE_ADDRESS,
                "startTime": now_rfc3339(), "containerStatuses": statuses}

    def _deployment_unready(self, rt: ResType, key, obj: dict, status: dict, replicas: int):
        status.update({"replicas": replicas, "updatedReplicas": replicas, "unavailableReplicas": replicas})
        self._commit_unavailable(rt, key, obj, status, "ReplicaSetUpdated", "is progressing")
        self._schedule(self.ready_delay, self._deployment_ready, key, obj["metadata"]["uid"])

    def _commit_unavailable(self, rt: ResType, key, obj: dict, status: dict, reason: str, progress: str):
        old_status = obj.get("status") or {}
        if {k: v for k, v in old_status.items() if k != "conditions"} == \
                {k: v for k, v in status.items() if k != "conditions"} and old_status.get("conditions"):
            return
        stamp = now_rfc3339()
        status["conditions"] = [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
             "message": "Deployment does not have minimum availability.", "lastUpdateTime": stamp,
             "lastTransitionTime": stamp},
            {"type": "Progressing", "status": "True", "reason": reason,
             "message": f'ReplicaSet "{key[3]}-{hashlib.sha1(key[3].encode()).hexdigest()[:10]}" {progress}.',
             "lastUpdateTime": stamp, "lastTransitionTime": stamp},
        ]
        new = _clone(obj)
        new["status"] = status
        self._commit(rt, key, new, "MODIFIED", obj)

    def _ready_pods(self, key, deployment: dict) -> int:
        """The Deployment's pods whose Ready condition is True (what the ReplicaSet controller counts)."""
        uid = deployment["metadata"]["uid"]
        count = 0
        for k, pod in self.objects.items():
            if k[:3] != ("", "pods", key[2]):
                continue
            if not any(ref.get("uid") == uid for ref in pod["metadata"].get("ownerReferences") or []):
                continue
            count += _pod_is_ready(pod)
        return count

    def _deployment_failed(self, rt: ResType, key, obj: dict, status: dict, replicas: int):
        """Its pods cannot be created: the ReplicaSet's ReplicaFailure shows on the Deployment."""
        stamp = now_rfc3339()
        pods = sum(1 for k, o in self.objects.items() if k[:3] == ("", "pods", key[2]) and any(
            ref.get("uid") == obj["metadata"]["uid"] for ref in o["metadata"].get("ownerReferences") or []))
        status.update({"replicas": pods, "unavailableReplicas": replicas})
        rs = f'{key[3]}-{hashlib.sha1(key[3].encode()).hexdigest()[:10]}'
        status["conditions"] = [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
             "message": "Deployment does not have minimum availability.", "lastUpdateTime": stamp,
             "lastTransitionTime": stamp},
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
             "message": self.replica_failures[key], "lastUpdateTime": stamp, "lastTransitionTime": stamp},
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
             "message": f'ReplicaSet "{rs}" is progressing.', "lastUpdateTime": stamp, "lastTransitionTime": stamp},
        ]
        def comparable(st: dict) -> dict:  # without the timestamps
            return {**st, "conditions": [(c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
                                         for c in st.get("conditions") or []]}

        if comparable(obj.get("status") or {}) == comparable(status):
            return
        new = _clone(obj)
        new["status"] = status
        self._commit(rt, key, new, "MODIFIED", obj)

    def _replica_failure(self, key, message: str | None):
        """Records (or, with None, clears) why a Deployment's pods cannot be created, and shows it."""
        if message is None:
            if self.replica_failures.pop(key, None) is None:
                return
        elif self.replica_failures.get(key) == message:
            return
        else:
            self.replica_failures[key] = message
        obj = self.objects.get(key)
        if obj is not None:
            self._deployment_controller(self.lookup("apps", "v1", "deployments"), key, obj)

    def _deployment_ready(self, key, uid: str):
        obj = self.objects.get(key)
        if obj is None or obj["metadata"].get("uid") != uid:
            return
        self._deployment_controller(self.lookup("apps", "v1", "deployments"), key, obj, started=True)

    def _schedule(self, delay: float, fn, *args):
        heapq.heappush(self.timers, (time.monotonic() + delay, id(args), fn, args))
        self.cond.notify_all()

    def _run_timers(self):
        with self.cond:
            while not self.stopping:
                now = time.monotonic()
                while self.timers and self.timers[0][0] <= now:
                    _, _, fn, args = heapq.heappop(self.timers)
                    try:
                        fn(*args)
                    except Exception:  # a controller bug must not stop the server
                        traceback.print_exc()
                wait = (self.timers[0][0] - now) if self.timers else 1.0
                self.cond.wait(timeout=max(0.005, min(wait, 1.0)))

    # -- watch ---------------------------------------------------------------------------------

    def watch(self, rt: ResType, ns: str | None, query: dict, stop: threading.Event):
        """Yield watch events (dicts) until the timeout or ``stop``."""
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), rt)
        timeout = min(_int(query.get("timeoutSeconds"), 1800) or 1800, 1800)
        deadline = time.monotonic() + timeout
        rv_param = query.get("resourceVersion") or ""
        initial = query.get("sendInitialEvents") in ("true", "1")
        with self.lock:
            if not rv_param or rv_param == "0" or initial:
                start = self.rv
                first = [{"type": "ADDED", "object": self._present(rt, o)} for _, o in
                         self._select(rt, ns, labels, fields)]
                if initial:
                    first.append({"type": "BOOKMARK", "object": {
                        "kind": rt.kind, "apiVersion": rt.api_version,
                        "metadata": {"resourceVersion": str(self.rv),
                                     "annotations": {"k8s.io/initial-events-end": "true"}}}})
            else:
                start = _int(rv_param, -1)
                if start < 0:
                    raise ApiError(400, f"invalid resource version: {rv_param}")
                oldest = self.events[0][0] if self.events else self.rv + 1
                if start + 1 < oldest and start < self.rv:
                    first = [{"type": "ERROR", "object": ApiError(
                        410, f"too old resource version: {start} ({oldest - 1})", "Expired").status()}]
                    yield from first
                    return
                first = []
        yield from first
        last = start
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            batch = []
            with self.cond:
                if self.rv <= last:
                    self.cond.wait(timeout=min(remaining, 0.5))
                for rv, kind, key, obj, old in self.events:
                    if rv <= last:
                        continue
                    last = rv
                    if key[:2] != (rt.group, rt.plural) or (rt.namespaced and ns and key[2] != ns):
                        continue
                    now_match = (not labels or labels_match(labels, obj["metadata"].get("labels"))) and \
                        (not fields or fields_match(fields, obj))
                    was_match = old is not None and \
                        (not labels or labels_match(labels, old["metadata"].get("labels"))) and \
                        (not fields or fields_match(fields, old))
                    if kind == "MODIFIED" and not now_match and was_match:
                        kind = "DELETED"
                    elif kind == "MODIFIED" and now_match and not was_match:
                        kind = "ADDED"
                    elif not now_match:
                        continue
                    batch.append({"type": kind, "object": self._present(rt, obj)})
                last = max(last, self.rv) if not batch else last
            if batch:
                yield from batch
            else:
                yield None  # idle: lets the caller notice a client that went away

    # -- discovery and openapi -----------------------------------------------------------------

    def resource_list(self, group: str, version: str) -> dict | None:
        types = [t for t in self.all_types() if t.group == group and t.version == version]
        if not types:
            return None
        resources = []
        for t in types:
            resources.extend(t.discovery())
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    def api_group(self, group: str, versions: list[str]) -> dict:
        vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": vs, "preferredVersion": vs[0]}

    def openapi_index(self) -> dict:
        docs = self.openapi_docs()
        paths = {}
        for gv_path in docs:
            paths[gv_path] = {"serverRelativeURL": f"/openapi/v3/{gv_path}?hash={self.openapi_hash(gv_path)}"}
        return {"paths": paths}

    def openapi_hash(self, gv_path: str) -> str:
        return hashlib.sha512(self.cached_json(f"openapi:{gv_path}", lambda: self.openapi_docs()[gv_path])
                              ).hexdigest().upper()

    def cached_json(self, key: str, build) -> bytes:
        """Serialized answer for ``key``, built once until the set of served types changes."""
        with self.lock:
            data = self.bytes_cache.get(key)
            if data is None:
                data = json.dumps(build(), separators=(",", ":")).encode()
                self.bytes_cache[key] = data
            return data

    def openapi_docs(self) -> dict:
        with self.lock:
            if self.openapi_cache is not None:
                return self.openapi_cache
            docs = {}
            for group, versions in self.group_versions():
                for v in versions:
                    gv_path = f"apis/{group}/{v}" if group else f"api/{v}"
                    schemas, paths = {}, {}
                    for t in self.all_types():
                        if t.group != group or t.version != v:
                            continue
                        if t.crd:
                            schemas[_openapi_name(t)] = self._crd_schema(t)
                        paths.update(_openapi_paths(t))
                    docs[gv_path] = {"openapi": "3.0.0",
                                     "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
                                     "paths": paths, "components": {"schemas": schemas}}
            self.openapi_cache = docs
            return docs

    def _crd_schema(self, t: ResType) -> dict:
        crd = self.objects.get(("apiextensions.k8s.io", "customresourcedefinitions", "", t.crd)) or {}
        schema = {"type": "object"}
        for v in crd.get("spec", {}).get("versions", []):
            if v.get("name") == t.version:
                schema = _clone((v.get("schema") or {}).get("openAPIV3Schema") or schema)
        schema["x-kubernetes-group-version-kind"] = [{"group": t.group, "version": t.version, "kind": t.kind}]
        return schema

    # -- dump ----------------------------------------------------------------------------------

    # -- the mesh model (tests/sandbox/meshmodel.py) -----------------------------------------------

    def mesh_view(self) -> "meshmodel.View":
        with self.lock:
            return meshmodel.View(self.name, _clone(self.objects))

    def _run_mesh_agent(self):
        """What Istio does where only the network can tell (see meshmodel.py), outside the lock: the injector's
        verdict for pods a Deployment waits to create (and, every MESH_RETRY seconds, for those refused), and
        the first configuration of sidecars that have none yet."""
        while not self.stopping:
            self.mesh_wake.wait(_mesh_retry())
            self.mesh_wake.clear()
            with self.lock:
                replicate = dict(self.mesh_replicate)
                waiting = {k for k in self.mesh_waiting if k in self.objects}
                self.mesh_waiting &= waiting
                unpatched = self._unpatched_injectors()
                if not replicate and not waiting and not unpatched:
                    continue
                view = meshmodel.View(self.name, _clone(self.objects))
            network = meshmodel.Network(meshmodel.load_hosts(self.hosts_file))
            if unpatched and self._patch_injectors(view, network):
                with self.lock:
                    view = meshmodel.View(self.name, _clone(self.objects))
            verdicts = {}
            for key in sorted(set(replicate) | waiting):
                obj = view.objects.get(key) or {}
                labels = ((((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels")
                          if key[0] == "apps" else (obj.get("metadata") or {}).get("labels")) or {}
                try:
                    verdicts[key] = meshmodel.injection(view, key[2], network, labels)
                except Exception:  # a model bug must not stop the server
                    traceback.print_exc()
            with self.lock:
                for key, uid in replicate.items():
                    obj = self.objects.get(key)
                    if self.mesh_replicate.get(key) != uid or obj is None or obj["metadata"].get("uid") != uid:
                        continue
                    del self.mesh_replicate[key]
                    verdict = verdicts.get(key)
                    if verdict is None:  # the namespace left the mesh meanwhile
                        verdict = meshmodel.Injection(True, "", True)
                    self._replicate_pods(key, obj, injection=verdict)
                    if key in self.objects:  # it counts the pods just made (ready at once when configured)
                        self._deployment_controller(self.lookup("apps", "v1", "deployments"), key, self.objects[key])
                for key in waiting:
                    verdict = verdicts.get(key)
                    if verdict is not None and verdict.configured:
                        self._proxy_configured(key)

    def _unpatched_injectors(self) -> bool:
        """An injector webhook of this cluster still lacks its caBundle. Caller holds the lock."""
        view = meshmodel.View(self.name, self.objects)
        return any(meshmodel.lacks_ca_bundle(c) for c in meshmodel.injector_configs(view))

    def _patch_injectors(self, view: "meshmodel.View", network: "meshmodel.Network | None") -> bool:
        """istiod's webhook cert patcher (see meshmodel.webhook_ca_bundle): the injector's webhooks get the
        caBundle of the istiod that serves them. ``network`` None: this cluster's own istiod only. Called
        without the lock when ``network`` is given (the model asks the other clusters)."""
        bundles = {}
        for config in meshmodel.injector_configs(view):
            if meshmodel.lacks_ca_bundle(config):
                try:
                    bundle = meshmodel.webhook_ca_bundle(view, config, network)
                except Exception:  # a model bug must not stop the server
                    traceback.print_exc()
                    continue
                if bundle:
                    bundles[config["metadata"]["name"]] = bundle
        if not bundles:
            return False
        with self.lock if network is not None else contextlib.nullcontext():
            rt = self.lookup("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations")
            for name, bundle in bundles.items():
                key = ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", name)
                old = self.objects.get(key)
                if old is None:
                    continue
                new = _clone(old)
                for hook in new.get("webhooks") or []:
                    hook.setdefault("clientConfig", {})["caBundle"] = bundle
                if new != old:
                    self._commit(rt, key, new, "MODIFIED", old)
        self.mesh_wake.set()  # pods refused meanwhile are tried again
        return True

    def _patch_injectors_soon(self):
        if not self.webhook_patch_pending:
            self.webhook_patch_pending = True
            self._schedule(0.0, self._run_local_patcher)

    def _run_local_patcher(self):
        with self.lock:
            self.webhook_patch_pending = False
            self._patch_injectors(meshmodel.View(self.name, self.objects), None)

    def _proxy_configured(self, key):
        """The pod's istio-proxy got its first configuration: it becomes ready."""
        self.mesh_waiting.discard(key)
        self.container_ready(key, "istio-proxy")

    def container_ready(self, key, name: str, restarted: bool = False):
        """A container of the pod becomes ready (``restarted``: the kubelet started it again, now)."""
        pod = self.objects.get(key)
        if pod is None:
            return
        new = _clone(pod)
        status = new.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            if cs.get("name") == name:
                cs["ready"] = True
                if restarted:
                    cs.update({"started": True, "state": {"running": {"startedAt": now_rfc3339()}}})
        unready = [cs.get("name", "") for cs in status.get("containerStatuses") or [] if not cs.get("ready")]
        for cond in status.get("conditions") or []:
            if cond.get("type") in ("ContainersReady", "Ready"):
                cond["status"] = "False" if unready else "True"
                cond.pop("reason", None)
                cond.pop("message", None)
                if unready:
                    cond.update({"reason": "ContainersNotReady",
                                 "message": f"containers with unready status: [{' '.join(unready)}]"})
        self._commit(self.lookup("", "v1", "pods"), key, new, "MODIFIED", pod)
        # Its Deployment counts ready pods (and a rolling update retires the old ones once the new are ready).
        for ref in pod["metadata"].get("ownerReferences") or []:
            owner = ("apps", "deployments", key[2], ref.get("name", ""))
            deployment = self.objects.get(owner)
            if ref.get("kind") == "Deployment" and deployment and deployment["metadata"].get("uid") == ref.get("uid"):
                self._replicate_pods(owner, deployment)
                self._deployment_controller(self.lookup("apps", "v1", "deployments"), owner, self.objects[owner])

    def remote_clusters(self) -> dict:
        """What this cluster's control plane has synced, per remote secret (istioctl remote-clusters)."""
        hosts = meshmodel.load_hosts(self.hosts_file)
        rows = [{"secret": f"{meshmodel.ISTIO_NS}/{p.secret}", "cluster": p.cluster_id, "status": p.status,
                 "reason": p.reason} for p in meshmodel.peers(self.mesh_view(), hosts)]
        return {"cluster": self.name, "clusters": rows}

    def run_in_pod(self, pod: dict, container: dict, argv: list[str]) -> tuple[int, bytes, bytes, str | None]:
        """(exit code, stdout, stderr, internal error) of a command run in a container."""
        image = str(container.get("image", ""))
        if argv[:1] == ["curl"] and "curl" in image.rsplit("/", 1)[-1]:
            local = self.mesh_view()
            mesh = meshmodel.Mesh(local, meshmodel.load_hosts(self.hosts_file))
            # outside the lock: the model may ask other clusters, which may be asking this one
            code, out, err = meshmodel.curl(mesh, local, pod, argv, self.call_counters, self.lock)
            return code, out, err, None
        if argv[:1] == ["hostname"]:
            return 0, (pod["metadata"]["name"] + "\n").encode(), b"", None
        exe = argv[0] if argv else ""
        return 0, b"", b"", (f"error executing command in container: failed to exec in container: failed to start "
                             f"exec: OCI runtime exec failed: exec failed: unable to start container process: "
                             f"exec: {json.dumps(exe)}: executable file not found in $PATH: unknown")

    def dump(self) -> bytes:
        with self.lock:
            items = [{"group": k[0], "resource": k[1], "namespace": k[2], "name": k[3], "object": self.objects[k]}
                     for k in sorted(self.objects)]
            return json.dumps({"cluster": self.name, "objects": items}, sort_keys=True, separators=(",", ":")).encode()

    # -- save and restore (a test starts from a copy of a cluster instead of building it again) -------------

    def settled(self) -> bool:
        """No controller has work pending: a saved state restarts exactly where this one stands."""
        return not (self.timers or self.gateway_reconcile_pending or self.mesh_replicate
                    or any(k in self.objects for k in self.mesh_waiting))

    def state(self) -> dict:
        """Everything a restarted emulator needs to answer as this one does: the objects (UIDs, resource
        versions, LoadBalancer addresses), the tokens it accepts, the next addresses it hands out and the
        model's round-robin positions. Only a settled cluster can be saved (see settled)."""
        with self.lock:
            if not self.settled():
                raise ApiError(409, "the cluster's controllers have work pending; try again shortly", "Conflict")
            return {"version": 1, "cluster": self.name, "rv": self.rv,
                    "objects": [[list(k), self.objects[k]] for k in sorted(self.objects)],
                    "tokens": [[t, list(k)] for t, k in sorted(self.tokens.items())],
                    "next_cluster_ip": self.next_cluster_ip, "next_node_port": self.next_node_port,
                    "next_lb_ip": self.next_lb_ip,
                    "call_counters": [[list(k), n] for k, n in sorted(self.call_counters.items(), key=repr)],
                    "replica_failures": [[list(k), m] for k, m in sorted(self.replica_failures.items())]}

    def restore(self, state: dict) -> None:
        """Replace this cluster's state with a saved one (``state()`` of a cluster of the same name)."""
        if state.get("version") != 1 or state.get("cluster") != self.name:
            raise ValueError(f"not a saved state of cluster {self.name!r}")
        with self.lock:
            self.objects = {tuple(k): obj for k, obj in state["objects"]}
            self.rv = int(state["rv"])
            self.events.clear()
            self.tokens = {t: tuple(k) for t, k in state["tokens"]}
            self.next_cluster_ip = int(state["next_cluster_ip"])
            self.next_node_port = int(state["next_node_port"])
            self.next_lb_ip = int(state["next_lb_ip"])
            self.call_counters = {tuple(k): n for k, n in state["call_counters"]}
            self.replica_failures = {tuple(k): m for k, m in state["replica_failures"]}
            self.mesh_replicate, self.mesh_waiting = {}, set()
            self.timers = []
            self._rebuild_crd_types()


def _is_namespace(rt: ResType) -> bool:
    return rt.group == "" and rt.plural == "namespaces"


def _spec_part(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


_QUERY_PARAMS = {
    "get": ["pretty"],
    "list": ["pretty", "labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "watch",
             "timeoutSeconds"],
    "post": ["pretty", "dryRun", "fieldManager", "fieldValidation"],
    "put": ["pretty", "dryRun", "fieldManager", "fieldValidation"],
    "patch": ["pretty", "dryRun", "fieldManager", "fieldValidation", "force"],
    "delete": ["pretty", "dryRun", "gracePeriodSeconds", "propagationPolicy"],
    "deletecollection": ["pretty", "dryRun", "labelSelector", "fieldSelector", "propagationPolicy"],
}


def _openapi_op(t: ResType, action: str, path_params: list[str], sub: str = "") -> dict:
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string", "uniqueItems": True}}
              for p in path_params]
    params += [{"name": q, "in": "query", "schema": {"type": "boolean" if q in ("watch", "force") else "string",
                                                      "uniqueItems": True}}
               for q in _QUERY_PARAMS[action]]
    op = {"operationId": f"{action}{t.kind}{sub.capitalize()}", "parameters": params,
          "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
          "x-kubernetes-action": action,
          "x-kubernetes-group-version-kind": {"group": t.group, "version": t.version, "kind": t.kind}}
    if action in ("post", "put", "patch"):
        # No strategic-merge media type: kubectl would then compute the patch from OpenAPI schemas, which this
        # server does not publish for built-in kinds; without it kubectl uses its compiled-in types instead.
        media = ["application/json"] if action != "patch" else [
            "application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json"]
        op["requestBody"] = {"content": {m: {"schema": {"type": "object"}} for m in media}, "required": True}
    return op


def _openapi_paths(t: ResType) -> dict:
    base = f"/apis/{t.group}/{t.version}" if t.group else f"/api/{t.version}"
    if t.virtual:
        return {f"{base}/{t.plural}": {"post": _openapi_op(t, "post", [])}}
    coll = f"{base}/namespaces/{{namespace}}/{t.plural}" if t.namespaced else f"{base}/{t.plural}"
    pp = ["namespace"] if t.namespaced else []
    out = {
        coll: {"get": _openapi_op(t, "list", pp), "post": _openapi_op(t, "post", pp),
               "delete": _openapi_op(t, "deletecollection", pp)},
        f"{coll}/{{name}}": {"get": _openapi_op(t, "get", pp + ["name"]), "put": _openapi_op(t, "put", pp + ["name"]),
                             "patch": _openapi_op(t, "patch", pp + ["name"]),
                             "delete": _openapi_op(t, "delete", pp + ["name"])},
    }
    if t.namespaced:
        out[f"{base}/{t.plural}"] = {"get": _openapi_op(t, "list", [])}
    if "status" in t.subresources:
        out[f"{coll}/{{name}}/status"] = {"get": _openapi_op(t, "get", pp + ["name"], "status"),
                                          "put": _openapi_op(t, "put", pp + ["name"], "status"),
                                          "patch": _openapi_op(t, "patch", pp + ["name"], "status")}
    return out


def _openapi_name(t: ResType) -> str:
    rev = ".".join(reversed(t.group.split(".")))
    return f"{rev}.{t.version}.{t.kind}"


def _pod_is_ready(pod: dict | None) -> bool:
    conditions = ((pod or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _node_name(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return cleaned[:40] or "node"


def _version_priority(v: str):
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", v or "")
    if not m:
        return (3, 0, 0, v)
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0), v)


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _validate_qualified(errs: Invalid, field: str, key):
    if not isinstance(key, str) or not key:
        errs.invalid_value(field, key, "name part must be non-empty")
        return
    prefix, _, name = key.rpartition("/")
    if prefix:
        if len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix):
            errs.invalid_value(field, key, "prefix part " + MSG_SUBDOMAIN)
    if len(name) > 63:
        errs.invalid_value(field, key, "name part must be no more than 63 characters")
    elif not QUALIFIED_NAME.match(name):
        errs.invalid_value(field, key, MSG_QUALIFIED)


_SCHEMA_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def _check_schema(errs: Invalid, schema: dict, value, path: str, top: bool = False):
    """A light structural check of a custom object against its CRD schema (types and required fields)."""
    if not isinstance(schema, dict) or value is None:
        return
    typ = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errs.invalid_value(path or ".", value, 'must be of type int-or-string')
        return
    if typ in _SCHEMA_TYPES and not isinstance(value, _SCHEMA_TYPES[typ]):
        errs.add(path, f'{path}: Invalid value: "{type(value).__name__}": {path} in body must be of type {typ}: '
                       f'"{_json_type(value)}"', "FieldValueTypeInvalid")
        return
    if typ == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
        errs.add(path, f'{path}: Invalid value: "{_json_type(value)}": {path} in body must be of type integer: '
                       f'"{_json_type(value)}"', "FieldValueTypeInvalid")
        return
    if typ == "number" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        errs.add(path, f'{path}: Invalid value: "{_json_type(value)}": {path} in body must be of type number',
                 "FieldValueTypeInvalid")
        return
    if isinstance(value, str) and schema.get("enum") and value not in schema["enum"]:
        errs.unsupported(path, value, [str(e) for e in schema["enum"]])
    if isinstance(value, dict):
        for req in schema.get("required") or []:
            if req not in value and not (top and req in ("apiVersion", "kind", "metadata")):
                errs.required(f"{path}.{req}" if path else req)
        props = schema.get("properties") or {}
        for k, v in value.items():
            if top and k in ("apiVersion", "kind", "metadata"):
                continue
            if k in props:
                _check_schema(errs, props[k], v, f"{path}.{k}" if path else k)
            elif isinstance(schema.get("additionalProperties"), dict):
                _check_schema(errs, schema["additionalProperties"], v, f"{path}.{k}" if path else k)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _check_schema(errs, schema["items"], item, f"{path}[{i}]")


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# ---------------------------------------------------------------------------------------------- tables


def _cols(*names) -> list[dict]:
    out = []
    for n in names:
        fmt = "name" if n == "Name" else ""
        out.append({"name": n, "type": "string", "format": fmt, "description": n, "priority": 0})
    return out


def _svc_external(obj: dict) -> str:
    spec = obj.get("spec", {})
    if spec.get("type") == "ExternalName":
        return spec.get("externalName", "<none>")
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ips = [i.get("ip") or i.get("hostname") for i in ingress] + list(spec.get("externalIPs") or [])
    if ips:
        return ",".join(str(i) for i in ips if i)
    return "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"


def _svc_ports(obj: dict) -> str:
    parts = []
    for p in obj.get("spec", {}).get("ports") or []:
        s = str(p.get("port"))
        if p.get("nodePort"):
            s += f":{p['nodePort']}"
        parts.append(f"{s}/{p.get('protocol', 'TCP')}")
    return ",".join(parts) or "<none>"


_JSONPATH_STEP = re.compile(r"""\.([^.\[\]]+)|\[(\d+|\*)\]|\[\?\(@\.([^=!<> ]+)\s*==\s*["']([^"']*)["']\)\]""")


def _jsonpath_simple(obj: dict, path: str):
    """The JSONPath subset CRD printer columns use: fields, [N], [*] and [?(@.field=="value")] filters.
    Several matches print comma-separated, as the API server's printer does."""
    current = [obj]
    for m in _JSONPATH_STEP.finditer(path if path.startswith((".", "[")) else "." + path):
        field, index, key, value = m.groups()
        nxt = []
        for cur in current:
            if field is not None and isinstance(cur, dict) and field in cur:
                nxt.append(cur[field])
            elif index is not None and isinstance(cur, list):
                if index == "*":
                    nxt.extend(cur)
                elif int(index) < len(cur):
                    nxt.append(cur[int(index)])
            elif key is not None and isinstance(cur, list):
                nxt.extend(item for item in cur if isinstance(item, dict) and str(item.get(key)) == value)
        current = nxt
    if not current:
        return None
    if len(current) == 1:
        return current[0]
    return ",".join(v if isinstance(v, str) else json.dumps(v) for v in current)


def table_columns(rt: ResType):
    """Column definitions and a row function for ``kubectl get`` (server-side printing)."""
    age = lambda o: human_age(o["metadata"].get("creationTimestamp"))  # noqa: E731
    name = lambda o: o["metadata"]["name"]  # noqa: E731
    if rt.crd:
        cols = [("Name", name)]
        for c in rt.printer_columns:
            path = c.get("jsonPath", "")
            if path == ".metadata.creationTimestamp":
                cols.append((c.get("name", "Age"), age))
            else:
                cols.append((c.get("name", path), lambda o, p=path: _fmt_cell(_jsonpath_simple(o, p))))
        if len(cols) == 1:
            cols.append(("Age", age))
        return _cols(*[c[0] for c in cols]), lambda o: [f(o) for _, f in cols]
    key = (rt.group, rt.plural)
    if key == ("", "namespaces"):
        return _cols("Name", "Status", "Age"), lambda o: [name(o), (o.get("status") or {}).get("phase", ""), age(o)]
    if key == ("", "secrets"):
        return _cols("Name", "Type", "Data", "Age"), lambda o: [name(o), o.get("type", ""),
                                                                len(o.get("data") or {}), age(o)]
    if key == ("", "configmaps"):
        return _cols("Name", "Data", "Age"), lambda o: [name(o), len(o.get("data") or {}) +
                                                        len(o.get("binaryData") or {}), age(o)]
    if key == ("", "services"):
        return (_cols("Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age"),
                lambda o: [name(o), o["spec"].get("type", ""), o["spec"].get("clusterIP", "<none>"),
                           _svc_external(o), _svc_ports(o), age(o)])
    if key == ("", "serviceaccounts"):
        return _cols("Name", "Secrets", "Age"), lambda o: [name(o), len(o.get("secrets") or []), age(o)]
    if key == ("", "pods"):
        def pod_row(o):
            n = len((o.get("spec") or {}).get("containers") or [])
            status = o.get("status") or {}
            phase = status.get("phase", "Pending")
            statuses = status.get("containerStatuses")
            ready = sum(1 for c in statuses if c.get("ready")) if statuses else (n if phase == "Running" else 0)
            # like the real printer: a waiting container's reason replaces the phase
            waiting = [((c.get("state") or {}).get("waiting") or {}).get("reason") for c in statuses or []]
            return [name(o), f"{ready}/{n}", next((w for w in waiting if w), phase), 0, age(o)]
        return _cols("Name", "Ready", "Status", "Restarts", "Age"), pod_row
    if key == ("", "nodes"):
        return (_cols("Name", "Status", "Roles", "Age", "Version"),
                lambda o: [name(o), "Ready", "control-plane", age(o), SERVER_VERSION["gitVersion"]])
    if key == ("apps", "deployments"):
        def dep_row(o):
            spec, st = o.get("spec") or {}, o.get("status") or {}
            return [name(o), f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
                    st.get("updatedReplicas", 0), st.get("availableReplicas", 0), age(o)]
        return _cols("Name", "Ready", "Up-to-date", "Available", "Age"), dep_row
    if key == ("apps", "daemonsets"):
        def ds_row(o):
            st = o.get("status") or {}
            selector = ((o.get("spec") or {}).get("template") or {}).get("spec", {}).get("nodeSelector") or {}
            return [name(o), st.get("desiredNumberScheduled", 0), st.get("currentNumberScheduled", 0),
                    st.get("numberReady", 0), st.get("updatedNumberScheduled", 0), st.get("numberAvailable", 0),
                    ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>", age(o)]
        return _cols("Name", "Desired", "Current", "Ready", "Up-to-date", "Available", "Node Selector", "Age"), ds_row
    if key == ("apiextensions.k8s.io", "customresourcedefinitions"):
        return _cols("Name", "Created At"), lambda o: [name(o), o["metadata"].get("creationTimestamp", "")]
    return _cols("Name", "Age"), lambda o: [name(o), age(o)]


def _fmt_cell(value):
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return value


def to_table(rt: ResType, objs: list[dict], meta: dict) -> dict:
    cols, row = table_columns(rt)
    rows = []
    for o in objs:
        partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}
        rows.append({"cells": row(o), "object": partial})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": cols,
            "rows": rows}


# ---------------------------------------------------------------------------------------------- http


class Server(ThreadingHTTPServer):
    """Serves TLS and plain HTTP on the same port: a connection opening with a TLS handshake gets TLS."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, cluster: Cluster, state_dir: str | None, tls: ssl.SSLContext | None, port: int = 0):
        self.cluster = cluster
        self.port = port
        self.tls = tls
        self.stop_event = threading.Event()
        self.log_lock = threading.Lock()
        self.log_file = None
        if state_dir:
            os.makedirs(state_dir, exist_ok=True)
            self.log_file = open(os.path.join(state_dir, "requests.jsonl"), "a", encoding="utf-8")
        super().__init__(("127.0.0.1", port), Handler)

    def server_bind(self):
        if self.port:
            # A given port is held for this cluster by the process that started it (a saved cluster restarts
            # on the port its kubeconfig names); SO_REUSEPORT lets the emulator listen beside that reservation.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self):
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def finish_request(self, request, client_address):
        conn = request
        if self.tls is not None:
            try:
                request.settimeout(30)
                first = request.recv(1, socket.MSG_PEEK)
                if first == b"\x16":
                    conn = self.tls.wrap_socket(request, server_side=True)
                request.settimeout(None) if conn is request else conn.settimeout(None)
            except (OSError, ssl.SSLError):
                return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            if conn is not request:
                try:
                    conn.close()
                except OSError:
                    pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def log_request_line(self, entry: dict):
        if self.log_file is None:
            return
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self.log_lock:
            self.log_file.write(line)
            self.log_file.flush()


class _Watch:
    def __init__(self, rt, ns, query, table):
        self.rt, self.ns, self.query, self.table = rt, ns, query, table


class _Exec:
    def __init__(self, pod, container, argv, protocol):
        self.pod, self.container, self.argv, self.protocol = pod, container, argv, protocol


# kubectl 1.30+ runs exec over WebSocket (channel protocol v5, v4 accepted) and falls back to SPDY
# only when the upgrade fails; the emulator speaks the WebSocket protocol.
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    return head + payload


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sandbox-apiserver"
    sys_version = ""
    server: Server
    extra_headers: list[str] | None = None

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_PUT(self):
        self._handle()

    def do_PATCH(self):
        self._handle()

    def do_DELETE(self):
        self._handle()

    def do_HEAD(self):
        self._handle()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = _int(self.headers.get("Content-Length"), 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self):
        split = urlsplit(self.path)
        path = split.path
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        body = self._read_body()
        code = 500
        self.extra_headers = None
        try:
            result = self._route(path, query, body)
            if isinstance(result, _Exec):
                self._log(path, split.query, 101)
                self._serve_exec(result)
                return
            if isinstance(result, _Watch):
                code = 200
                self._log(path, split.query, code)
                self._stream_watch(result)
                return
            code, payload, ctype = result
            data = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        except ApiError as exc:
            self.extra_headers = None
            code, ctype = exc.code, "application/json"
            data = json.dumps(exc.status(), separators=(",", ":")).encode()
        except Exception as exc:  # report, never crash the connection thread silently
            traceback.print_exc()
            code, ctype = 500, "application/json"
            data = json.dumps(ApiError(500, f"Internal error occurred: {exc}").status()).encode()
        if not path.startswith("/_sandbox/"):
            self._log(path, split.query, code)
        self._send(code, data, ctype)

    def _log(self, path: str, query: str, code: int):
        self.server.log_request_line({"method": self.command, "path": path, "query": query, "status": code,
                                      "content_type": self.headers.get("Content-Type")})

    def _send(self, code: int, data: bytes, ctype: str):
        reason = self.responses.get(code, ("",))[0]
        head = [f"HTTP/1.1 {code} {reason}", f"Content-Type: {ctype}", f"Content-Length: {len(data)}",
                f"Date: {self.date_time_string()}"]
        head.extend(self.extra_headers or ["Cache-Control: no-cache, private"])
        self.extra_headers = None
        if self.close_connection:
            head.append("Connection: close")
        payload = ("\r\n".join(head) + "\r\n\r\n").encode()
        if self.command != "HEAD":
            payload += data
        self.wfile.write(payload)
        self.wfile.flush()

    def _exec_request(self, cluster: Cluster, ns: str, name: str) -> _Exec:
        params = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        with cluster.lock:
            pod = _clone(cluster.get(cluster.lookup("", "v1", "pods"), ns, name))
        upgrade = (self.headers.get("Upgrade") or "").lower()
        offered = [p.strip() for p in (self.headers.get("Sec-WebSocket-Protocol") or "").split(",") if p.strip()]
        if self.command != "GET" or upgrade != "websocket" or not self.headers.get("Sec-WebSocket-Key"):
            raise ApiError(400, "Upgrade request required", "BadRequest")
        protocol = next((p for p in EXEC_PROTOCOLS if p in offered), None)
        if protocol is None:
            raise ApiError(400, f"unable to upgrade connection: requested protocols {offered} are not supported "
                                f"(supported: {list(EXEC_PROTOCOLS)})", "BadRequest")
        containers = (pod.get("spec") or {}).get("containers") or []
        wanted = (params.get("container") or [""])[0]
        if not wanted:
            if len(containers) != 1:
                raise ApiError(400, f"a container name must be specified for pod {name}, choose one of: "
                                    f"[{' '.join(c.get('name', '') for c in containers)}]", "BadRequest")
            wanted = containers[0].get("name", "")
        container = next((c for c in containers if c.get("name") == wanted), None)
        if container is None:
            raise ApiError(400, f"container {wanted} is not valid for pod {name}", "BadRequest")
        running = {s.get("name") for s in (pod.get("status") or {}).get("containerStatuses") or []
                   if "running" in (s.get("state") or {})}
        if wanted not in running:
            raise ApiError(400, f'unable to upgrade connection: container not found ("{wanted}")', "BadRequest")
        argv = params.get("command") or []
        if not argv:
            raise ApiError(400, "you must specify at least 1 command", "BadRequest")
        return _Exec(pod, container, argv, protocol)

    def _serve_exec(self, ex: _Exec):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.close_connection = True
        head = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
                f"Sec-WebSocket-Accept: {accept}", f"Sec-WebSocket-Protocol: {ex.protocol}"]
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode())
            self.wfile.flush()
            code, out, err, internal = self.server.cluster.run_in_pod(ex.pod, ex.container, ex.argv)
            frames = b""
            if out:
                frames += ws_frame(0x2, b"\x01" + out)
            if err:
                frames += ws_frame(0x2, b"\x02" + err)
            if internal:
                status = {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {internal}",
                          "reason": "InternalError", "details": {"causes": [{"message": internal}]}, "code": 500}
            elif code:
                status = {"metadata": {}, "status": "Failure",
                          "message": f"command terminated with non-zero exit code: error executing command "
                                     f"[{' '.join(ex.argv)}], exit code {code}",
                          "reason": "NonZeroExitCode",
                          "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
            else:
                status = {"metadata": {}, "status": "Success"}
            frames += ws_frame(0x2, b"\x03" + json.dumps(status, separators=(",", ":")).encode())
            frames += ws_frame(0x8, (1000).to_bytes(2, "big"))
            self.wfile.write(frames)
            self.wfile.flush()
            self._drain_websocket()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass

    def _drain_websocket(self, timeout: float = 5.0):
        """Reads the client's frames until its close frame (answering pings), so it sees a clean close."""
        deadline = time.monotonic() + timeout
        self.connection.settimeout(timeout)
        while time.monotonic() < deadline:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = int.from_bytes(self.rfile.read(2), "big")
            elif length == 127:
                length = int.from_bytes(self.rfile.read(8), "big")
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 0x8:
                return
            if opcode == 0x9:
                self.wfile.write(ws_frame(0xA, payload))
                self.wfile.flush()

    def _stream_watch(self, w: _Watch):
        head = ["HTTP/1.1 200 OK", "Content-Type: application/json", "Transfer-Encoding: chunked",
                "Cache-Control: no-cache, private", f"Date: {self.date_time_string()}"]
        self.close_connection = True
        head.append("Connection: close")
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode())
            self.wfile.flush()
            for event in self.server.cluster.watch(w.rt, w.ns, w.query, self.server.stop_event):
                if event is None:
                    # a watch client never sends more bytes: readable means it closed the connection
                    if select.select([self.connection], [], [], 0)[0]:
                        break
                    continue
                if w.table and event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    event = {"type": event["type"], "object": to_table(w.rt, [event["object"]], {
                        "resourceVersion": event["object"]["metadata"].get("resourceVersion", "")})}
                chunk = json.dumps(event, separators=(",", ":")).encode() + b"\n"
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass

    # -- routing -------------------------------------------------------------------------------

    def _route(self, path: str, query: dict, body: bytes):
        cluster = self.server.cluster
        if path in UNAUTHENTICATED_PATHS or any(path.startswith(p + "/") for p in UNAUTHENTICATED_PATHS):
            return 200, b"ok", "text/plain; charset=utf-8"
        if path == "/_sandbox/dump":
            return 200, cluster.dump(), "application/json"
        if path == "/_sandbox/ca.crt":
            return 200, cluster.ca_pem.encode(), "application/x-pem-file"
        if path == "/_sandbox/state":
            return 200, json.dumps(cluster.state(), sort_keys=True).encode(), "application/json"
        if path == "/_sandbox/istiod/remote-clusters":
            return 200, cluster.remote_clusters(), "application/json"
        if not cluster.authenticate(self.headers.get("Authorization")):
            raise ApiError(401, "Unauthorized", "Unauthorized")
        method = self.command
        if method == "HEAD":
            method = "GET"
        parts = [p for p in path.split("/") if p]
        if path == "/version" or path == "/version/":
            return 200, SERVER_VERSION, "application/json"
        if not parts:
            paths = ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v2", "/openapi/v3", "/readyz",
                     "/version"]
            for g, versions in cluster.group_versions():
                if g:
                    paths.append(f"/apis/{g}")
                    paths.extend(f"/apis/{g}/{v}" for v in versions)
            return 200, {"paths": sorted(paths)}, "application/json"
        if parts[0] == "openapi":
            if parts[1:] == ["v2"]:
                accept = self.headers.get("Accept") or ""
                if "protobuf" in accept and "application/json" not in accept.split(",")[0]:
                    return 200, OPENAPI_V2_PROTO, "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
                return 200, {"swagger": "2.0", "info": {"title": "Kubernetes",
                                                        "version": SERVER_VERSION["gitVersion"]},
                             "paths": {}, "definitions": {}}, "application/json"
            if parts[1:] == ["v3"]:
                return 200, cluster.cached_json("openapi-index", cluster.openapi_index), "application/json"
            if len(parts) >= 3 and parts[1] == "v3":
                gv_path = "/".join(parts[2:])
                if gv_path in cluster.openapi_docs():
                    data = cluster.cached_json(f"openapi:{gv_path}", lambda: cluster.openapi_docs()[gv_path])
                    if query.get("hash") == cluster.openapi_hash(gv_path):
                        # like a real server: a hashed URL never changes, so clients may keep it
                        self.extra_headers = ["Cache-Control: public, immutable",
                                              f'Etag: "{query["hash"]}"']
                    return 200, data, "application/json"
            raise ApiError(404, "the server could not find the requested resource", "NotFound", {})
        if parts[0] == "api":
            if len(parts) == 1:
                if method != "GET":
                    raise ApiError(405, "the server does not allow this method on the requested resource")
                return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.server.server_address[1]}"}]}, \
                    "application/json"
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis":
            with cluster.lock:
                gvs = cluster.group_versions()
            if len(parts) == 1:
                return 200, cluster.cached_json("discovery:apis", lambda: {
                    "kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [cluster.api_group(g, v) for g, v in gvs if g]}), "application/json"
            if len(parts) == 2:
                for g, v in gvs:
                    if g == parts[1] and g:
                        return 200, dict(kind="APIGroup", apiVersion="v1", **cluster.api_group(g, v)), \
                            "application/json"
                raise no_resource()
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise no_resource()
        if not rest:
            with cluster.lock:
                if cluster.resource_list(group, version) is None:
                    raise no_resource()
                data = cluster.cached_json(f"discovery:{group}/{version}",
                                           lambda: cluster.resource_list(group, version))
            return 200, data, "application/json"
        return self._resource(cluster, method, group, version, rest, query, body)

    def _resource(self, cluster: Cluster, method: str, group: str, version: str, rest: list[str], query: dict,
                  body: bytes):
        # Writes without ?fieldManager= are owned by the client's User-Agent name, as kube-apiserver does it.
        query = {**query, "_agentManager": manager_from_agent(self.headers.get("User-Agent"))}
        if rest[0] == "namespaces" and len(rest) >= 3 and not (
                group == "" and len(rest) == 3 and rest[2] in ("status", "finalize")):
            ns, resource, tail = rest[1], rest[2], rest[3:]
        else:
            ns, resource, tail = None, rest[0], rest[1:]
        if len(tail) > 2:
            raise no_resource()
        name = tail[0] if tail else None
        sub = tail[1] if len(tail) > 1 else None
        with cluster.lock:
            rt = cluster.lookup(group, version, resource)
        if rt is None:
            raise no_resource()
        user = cluster.user_of(self.headers.get("Authorization"))
        if (group, resource, sub) == ("", "pods", "exec") and ns is not None and name is not None:
            if user is not None:  # the WebSocket upgrade is a GET, authorized as kube-apiserver does: create
                cluster.authorize(user, "create", "", "pods/exec", ns, name)
            return self._exec_request(cluster, ns, name)
        if ns is not None and not rt.namespaced:
            raise no_resource()
        if rt.namespaced and ns is None and name is not None:
            raise no_resource()
        requested = sub  # RBAC names the finalize subresource; storage treats it as a status write
        if sub == "finalize":
            sub = "status"
        if sub is not None and sub not in rt.subresources:
            raise no_resource()
        if user is not None:  # a service account's token: only what RBAC grants it
            verb = {"GET": "watch" if query.get("watch") in ("true", "1") else ("get" if name else "list"),
                    "POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())
            cluster.authorize(user, verb, group, resource + (f"/{requested}" if requested else ""), ns, name)
        if query.get("dryRun") not in (None, "", "All"):
            raise ApiError(400, f'dryRun: Unsupported value: "{query["dryRun"]}": supported values: "All"')
        protobuf = "protobuf" in (self.headers.get("Content-Type") or "") and method in ("POST", "PUT", "PATCH")
        if rt.virtual:
            if method != "POST" or name is not None:
                raise ApiError(405, "the server does not allow this method on the requested resource",
                               "MethodNotAllowed")
            review = decode_protobuf_request(body, rt.kind) if protobuf else _json_body(body)
            review = review if isinstance(review, dict) else {}
            attrs = (review.get("spec") or {}).get("resourceAttributes")
            if user is not None and rt.kind == "SelfSubjectAccessReview" and isinstance(attrs, dict):
                try:
                    cluster.authorize(user, attrs.get("verb", ""), attrs.get("group", ""),
                                      attrs.get("resource", "") + (f"/{attrs['subresource']}"
                                                                   if attrs.get("subresource") else ""),
                                      attrs.get("namespace") or None, attrs.get("name") or None)
                    review["status"] = {"allowed": True, "reason": "allowed by RBAC"}
                except ApiError:
                    review["status"] = {"allowed": False}
            else:
                review["status"] = {"allowed": True, "reason": "sandbox clusters allow every request"}
            review.setdefault("metadata", {})["creationTimestamp"] = None
            return 201, review, "application/json"
        if protobuf and sub != "token":
            if method == "PATCH":
                raise ApiError(415, "the body of the request was in an unknown format - accepted media types "
                                    "include: application/json-patch+json, application/merge-patch+json, "
                                    "application/apply-patch+yaml, application/strategic-merge-patch+json",
                               "UnsupportedMediaType")
            body = json.dumps(decode_protobuf_object(body, rt)).encode()
        want_table = "as=Table" in (self.headers.get("Accept") or "")
        if method == "GET":
            if name is None:
                if query.get("watch") in ("true", "1"):
                    return _Watch(rt, ns, query, want_table)
                listing = cluster.list(rt, ns, query)
                if want_table:
                    return 200, to_table(rt, listing["items"], listing["metadata"]), "application/json"
                return 200, listing, "application/json"
            if sub == "token":
                raise ApiError(405, "the server does not allow this method on the requested resource",
                               "MethodNotAllowed")
            if sub == "scale":
                return 200, cluster.get_scale(rt, ns, name), "application/json"
            obj = cluster.get(rt, ns, name)
            if want_table and sub is None:
                return 200, to_table(rt, [obj], {"resourceVersion": obj["metadata"].get("resourceVersion")}), \
                    "application/json"
            return 200, obj, "application/json"
        if method == "POST":
            if sub == "token" and name is not None:
                request = decode_protobuf_request(body, "TokenRequest") if protobuf else _json_body(body)
                return 201, cluster.issue_token_request(ns, name, request), "application/json"
            if name is not None:
                raise ApiError(405, "the server does not allow this method on the requested resource",
                               "MethodNotAllowed")
            if rt.namespaced and ns is None:
                raise ApiError(405, "the server does not allow this method on the requested resource",
                               "MethodNotAllowed")
            code, obj = cluster.create(rt, ns, _json_body(body), query)
            return code, obj, "application/json"
        if sub == "scale" and method in ("PUT", "PATCH") and name is not None:
            if method == "PUT":
                return 200, cluster.set_scale(rt, ns, name, _json_body(body), query), "application/json"
            return 200, cluster.set_scale(rt, ns, name, None, query, _json_body(body),
                                          self.headers.get("Content-Type") or ""), "application/json"
        if method == "PUT" and name is not None:
            return 200, cluster.replace(rt, ns, name, _json_body(body), query, sub), "application/json"
        if method == "PATCH" and name is not None:
            code, obj = cluster.patch(rt, ns, name, body, self.headers.get("Content-Type") or "", query, sub)
            return code, obj, "application/json"
        if method == "DELETE":
            options = _json_body(body) if body.strip() else {}
            if name is None:
                return 200, cluster.delete_collection(rt, ns, query), "application/json"
            if query.get("propagationPolicy") not in (None, "", "Orphan", "Background", "Foreground"):
                raise ApiError(400, f'propagationPolicy: Unsupported value: "{query["propagationPolicy"]}"')
            return 200, cluster.delete(rt, ns, name, query, options if isinstance(options, dict) else {}), \
                "application/json"
        raise ApiError(405, "the server does not allow this method on the requested resource", "MethodNotAllowed")


def _pb_fields(data: bytes) -> dict[int, list]:
    """Decode one protobuf message into {field number: [values]} (varints as int, length-delimited as bytes)."""
    out: dict[int, list] = {}
    i = 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    while i < len(data):
        tag = varint()
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value = varint()
        elif wire == 2:
            size = varint()
            value = data[i:i + size]
            i += size
        elif wire == 1:
            value = data[i:i + 8]
            i += 8
        elif wire == 5:
            value = data[i:i + 4]
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _pb_str(fields: dict, number: int) -> str:
    return fields.get(number, [b""])[0].decode("utf-8", "replace") if number in fields else ""


# Field numbers of the protobuf messages kubectl's typed clients send (from the published Kubernetes .proto
# files). Types: str, int, bool, bytes (base64 in JSON), map (string to string), mapb (string to bytes), intstr,
# qty (Quantity), time, or a message name. A leading "[" marks a repeated field; a trailing "!" keeps zero values
# (pointer fields in Go, where 0/false/"" is meaningful).
PB_SCHEMAS: dict[str, dict[int, tuple[str, str]]] = {
    "ObjectMeta": {1: ("name", "str"), 2: ("generateName", "str"), 3: ("namespace", "str"), 5: ("uid", "str"),
                   6: ("resourceVersion", "str"), 11: ("labels", "map"), 12: ("annotations", "map"),
                   13: ("ownerReferences", "[OwnerReference"), 14: ("finalizers", "[str")},
    "OwnerReference": {1: ("kind", "str"), 3: ("name", "str"), 4: ("uid", "str"), 5: ("apiVersion", "str"),
                       6: ("controller", "bool!"), 7: ("blockOwnerDeletion", "bool!")},
    "LabelSelector": {1: ("matchLabels", "map"), 2: ("matchExpressions", "[LabelSelectorRequirement")},
    "LabelSelectorRequirement": {1: ("key", "str"), 2: ("operator", "str"), 3: ("values", "[str")},
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec")},
    "NamespaceSpec": {1: ("finalizers", "[str")},
    "Secret": {1: ("metadata", "ObjectMeta"), 2: ("data", "mapb"), 3: ("type", "str"), 4: ("stringData", "map"),
               5: ("immutable", "bool!")},
    "ConfigMap": {1: ("metadata", "ObjectMeta"), 2: ("data", "map"), 3: ("binaryData", "mapb"),
                  4: ("immutable", "bool!")},
    "ServiceAccount": {1: ("metadata", "ObjectMeta"), 2: ("secrets", "[ObjectReference"),
                       3: ("imagePullSecrets", "[LocalObjectReference"),
                       4: ("automountServiceAccountToken", "bool!")},
    "ObjectReference": {1: ("kind", "str"), 2: ("namespace", "str"), 3: ("name", "str"), 4: ("uid", "str"),
                        5: ("apiVersion", "str"), 6: ("resourceVersion", "str"), 7: ("fieldPath", "str")},
    "LocalObjectReference": {1: ("name", "str")},
    "Service": {1: ("metadata", "ObjectMeta"), 2: ("spec", "ServiceSpec")},
    "ServiceSpec": {1: ("ports", "[ServicePort"), 2: ("selector", "map"), 3: ("clusterIP", "str"),
                    4: ("type", "str"), 5: ("externalIPs", "[str"), 7: ("sessionAffinity", "str"),
                    8: ("loadBalancerIP", "str"), 10: ("externalName", "str"), 11: ("externalTrafficPolicy", "str"),
                    17: ("ipFamilyPolicy", "str"), 18: ("clusterIPs", "[str"), 19: ("ipFamilies", "[str"),
                    22: ("internalTrafficPolicy", "str")},
    "ServicePort": {1: ("name", "str"), 2: ("protocol", "str"), 3: ("port", "int"), 4: ("targetPort", "intstr"),
                    5: ("nodePort", "int"), 6: ("appProtocol", "str")},
    "Deployment": {1: ("metadata", "ObjectMeta"), 2: ("spec", "DeploymentSpec")},
    "DeploymentSpec": {1: ("replicas", "int!"), 2: ("selector", "LabelSelector"), 3: ("template", "PodTemplateSpec"),
                       4: ("strategy", "DeploymentStrategy"), 5: ("minReadySeconds", "int"),
                       6: ("revisionHistoryLimit", "int!"), 7: ("paused", "bool"),
                       9: ("progressDeadlineSeconds", "int!")},
    "DeploymentStrategy": {1: ("type", "str"), 2: ("rollingUpdate", "RollingUpdateDeployment")},
    "RollingUpdateDeployment": {1: ("maxUnavailable", "intstr"), 2: ("maxSurge", "intstr")},
    "Pod": {1: ("metadata", "ObjectMeta"), 2: ("spec", "PodSpec")},
    "PodTemplateSpec": {1: ("metadata", "ObjectMeta"), 2: ("spec", "PodSpec")},
    "PodSpec": {2: ("containers", "[Container"), 3: ("restartPolicy", "str"),
                4: ("terminationGracePeriodSeconds", "int!"), 6: ("dnsPolicy", "str"), 7: ("nodeSelector", "map"),
                8: ("serviceAccountName", "str"), 9: ("serviceAccount", "str"), 10: ("nodeName", "str"),
                11: ("hostNetwork", "bool"), 14: ("securityContext", "Empty!"),
                15: ("imagePullSecrets", "[LocalObjectReference"), 19: ("schedulerName", "str"),
                20: ("initContainers", "[Container"), 21: ("automountServiceAccountToken", "bool!"),
                22: ("tolerations", "[Toleration")},
    "Container": {1: ("name", "str"), 2: ("image", "str"), 3: ("command", "[str"), 4: ("args", "[str"),
                  5: ("workingDir", "str"), 6: ("ports", "[ContainerPort"), 7: ("env", "[EnvVar"),
                  8: ("resources", "ResourceRequirements!"), 13: ("terminationMessagePath", "str"),
                  14: ("imagePullPolicy", "str"), 16: ("stdin", "bool"), 17: ("stdinOnce", "bool"),
                  18: ("tty", "bool"), 20: ("terminationMessagePolicy", "str")},
    "ContainerPort": {1: ("name", "str"), 2: ("hostPort", "int"), 3: ("containerPort", "int"),
                      4: ("protocol", "str"), 5: ("hostIP", "str")},
    "EnvVar": {1: ("name", "str"), 2: ("value", "str")},
    "ResourceRequirements": {1: ("limits", "mapq"), 2: ("requests", "mapq")},
    "Toleration": {1: ("key", "str"), 2: ("operator", "str"), 3: ("value", "str"), 4: ("effect", "str"),
                   5: ("tolerationSeconds", "int!")},
    "Empty": {},
    "Role": {1: ("metadata", "ObjectMeta"), 2: ("rules", "[PolicyRule")},
    "ClusterRole": {1: ("metadata", "ObjectMeta"), 2: ("rules", "[PolicyRule")},
    "PolicyRule": {1: ("verbs", "[str"), 2: ("apiGroups", "[str"), 3: ("resources", "[str"),
                   4: ("resourceNames", "[str"), 5: ("nonResourceURLs", "[str")},
    "RoleBinding": {1: ("metadata", "ObjectMeta"), 2: ("subjects", "[Subject"), 3: ("roleRef", "RoleRef")},
    "ClusterRoleBinding": {1: ("metadata", "ObjectMeta"), 2: ("subjects", "[Subject"), 3: ("roleRef", "RoleRef")},
    "Subject": {1: ("kind", "str"), 2: ("apiGroup", "str"), 3: ("name", "str"), 4: ("namespace", "str")},
    "RoleRef": {1: ("apiGroup", "str"), 2: ("kind", "str"), 3: ("name", "str")},
}


def _pb_signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _pb_scalar(kind: str, raw):
    if kind == "str":
        return raw.decode("utf-8")
    if kind == "int":
        return _pb_signed(raw)
    if kind == "bool":
        return bool(raw)
    if kind == "bytes":
        return base64.b64encode(raw).decode()
    if kind == "intstr":
        f = _pb_fields(raw)
        return _pb_str(f, 3) if f.get(1, [0])[0] == 1 else _pb_signed(f.get(2, [0])[0])
    if kind == "qty":
        return _pb_str(_pb_fields(raw), 1)
    return _pb_message(kind, raw)


def _pb_message(name: str, data: bytes) -> dict:
    schema = PB_SCHEMAS[name]
    out: dict = {}
    for number, values in _pb_fields(data).items():
        if number not in schema:
            continue
        field, kind = schema[number]
        keep_zero = kind.endswith("!")
        kind = kind.rstrip("!")
        if kind in ("map", "mapb", "mapq"):
            entries = {}
            for entry in values:
                e = _pb_fields(entry)
                raw = e.get(2, [b""])[0]
                entries[_pb_str(e, 1)] = (raw.decode("utf-8") if kind == "map" else
                                          base64.b64encode(raw).decode() if kind == "mapb" else
                                          _pb_str(_pb_fields(raw), 1))
            value = entries
        elif kind.startswith("["):
            value = [_pb_scalar(kind[1:], v) for v in values]
        else:
            value = _pb_scalar(kind, values[-1])
        if value in ("", 0, False, {}, []) and not keep_zero and value is not True:
            continue
        out[field] = value
    return out


def decode_protobuf_request(body: bytes, kind: str) -> dict:
    """The protobuf bodies of TokenRequest and SelfSubjectAccessReview (kubectl create token, auth can-i)."""
    if not body.startswith(b"k8s\x00"):
        raise ApiError(400, "provided protobuf is not a Kubernetes object envelope")
    try:
        raw = _pb_fields(body[4:]).get(2, [b""])[0]
        spec = _pb_fields(_pb_fields(raw).get(2, [b""])[0])
        if kind == "TokenRequest":
            out = {"audiences": [a.decode() for a in spec.get(1, [])]}
            if 4 in spec:
                out["expirationSeconds"] = spec[4][0]
            return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": out}
        attrs = {}
        if 1 in spec:
            ra = _pb_fields(spec[1][0])
            names = ["namespace", "verb", "group", "version", "resource", "subresource", "name"]
            attrs["resourceAttributes"] = {n: _pb_str(ra, i + 1) for i, n in enumerate(names) if i + 1 in ra}
        if 2 in spec:
            na = _pb_fields(spec[2][0])
            attrs["nonResourceAttributes"] = {"path": _pb_str(na, 1), "verb": _pb_str(na, 2)}
        return {"apiVersion": "authorization.k8s.io/v1", "kind": kind, "spec": attrs}
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"unable to decode protobuf body: {exc}")


def decode_protobuf_object(body: bytes, rt: "ResType") -> dict:
    """A Kubernetes protobuf envelope (as kubectl create sends) turned into the JSON form of the object."""
    if not body.startswith(b"k8s\x00"):
        raise ApiError(400, "provided protobuf is not a Kubernetes object envelope")
    try:
        envelope = _pb_fields(body[4:])
        type_meta = _pb_fields(envelope.get(1, [b""])[0])
        api_version, kind = _pb_str(type_meta, 1), _pb_str(type_meta, 2)
        if kind not in PB_SCHEMAS or rt.crd:
            raise ApiError(415, f"the body of the request was in an unknown format - this server accepts "
                                f"application/json for {kind or rt.kind}", "UnsupportedMediaType")
        obj = {"apiVersion": api_version, "kind": kind}
        obj.update(_pb_message(kind, envelope.get(2, [b""])[0]))
        return obj
    except (IndexError, ValueError, UnicodeDecodeError, KeyError) as exc:
        raise ApiError(400, f"unable to decode protobuf body: {exc}")


def _json_body(body: bytes):
    try:
        return json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"couldn't get version/kind; json parse error: {exc}")


# ---------------------------------------------------------------------------------------------- main


def _read_saved(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _mesh_retry() -> float:
    """MESH_RETRY, or the poll interval the tests set (SETUP_MESH_POLL_INTERVAL, seconds)."""
    try:
        value = float(os.environ.get(POLL_ENV) or MESH_RETRY)
    except ValueError:
        return MESH_RETRY
    return value if value > 0 else MESH_RETRY


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.sandbox.apiserver",
        description="An emulated Kubernetes API server for one cluster; TLS and plain HTTP on one port.")
    parser.add_argument("--name", required=True, help="cluster name (seeds the kube-system namespace UID)")
    parser.add_argument("--token", required=True, help="the bearer token clients must send")
    lb = parser.add_mutually_exclusive_group()
    lb.add_argument("--lb-delay", type=float, default=0.0,
                    help="seconds before a LoadBalancer Service gets an address (default 0)")
    lb.add_argument("--lb-never", action="store_true", help="LoadBalancer Services never get an address")
    parser.add_argument("--ready-delay", type=float, default=0.0,
                        help="seconds before a new Deployment's replicas are ready (default 0)")
    parser.add_argument("--namespace-delete-delay", type=float, default=0.0,
                        help="seconds a deleted namespace stays Terminating before it is gone (default 0)")
    parser.add_argument("--lb-ip-start", type=int, default=10,
                        help=f"last octet of the first LoadBalancer address ({LB_PREFIX}N, default 10)")
    parser.add_argument("--state-dir", help="directory for requests.jsonl (one line per request) and ca.crt")
    parser.add_argument("--hostname", action="append", default=[],
                        help="a name the server's certificate also holds (repeatable)")
    parser.add_argument("--hosts", help="JSON file mapping the sandbox's API server names to loopback ports "
                                        "(read by the mesh model, see meshmodel.py)")
    parser.add_argument("--no-tls", action="store_true",
                        help="plain HTTP only (note: kubectl sends no credentials over plain HTTP)")
    parser.add_argument("--port", type=int, default=0,
                        help="listen on this port (SO_REUSEPORT: the caller may hold it reserved); default: any")
    parser.add_argument("--restore", metavar="FILE",
                        help="start from a saved state (JSON: GET /_sandbox/state, plus 'tls': {cert, key} to keep "
                             "the cluster's CA) instead of an empty cluster")
    parser.add_argument("--kube-version", metavar="1.MINOR.PATCH",
                        help=f"the Kubernetes version GET /version reports (default {SERVER_VERSION['gitVersion']})")
    args = parser.parse_args(argv)
    if args.kube_version:
        set_server_version(args.kube_version)

    saved = _read_saved(args.restore) if args.restore else None
    if saved is not None and saved.get("tls") and not args.no_tls:
        material = (saved["tls"]["cert"], saved["tls"]["cert"], saved["tls"]["key"])
    else:
        material = None if args.no_tls else make_tls_material(args.name, args.hostname)
    if material is None and not args.no_tls:
        print("warning: openssl failed; serving plain HTTP only (kubectl will not send its token)",
              file=sys.stderr)
    ca_pem = material[0] if material else None
    cluster = Cluster(args.name, args.token, None if args.lb_never else args.lb_delay, args.lb_ip_start, ca_pem,
                      args.hosts, ready_delay=args.ready_delay, namespace_delete_delay=args.namespace_delete_delay)
    if saved is not None:
        cluster.restore(saved)
    server = Server(cluster, args.state_dir, tls_context(material[1], material[2]) if material else None, args.port)
    if args.state_dir:
        if material:  # kept beside the CA so that a saved copy of this cluster serves the same certificate
            with os.fdopen(os.open(os.path.join(args.state_dir, "tls.key"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                   0o600), "w", encoding="ascii") as fh:
                fh.write(material[2])
        with open(os.path.join(args.state_dir, "ca.crt"), "w", encoding="ascii") as fh:
            fh.write(cluster.ca_pem)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write(f"listening on http://127.0.0.1:{server.server_address[1]}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except SystemExit:
        pass
    finally:
        server.stop_event.set()
        with cluster.cond:
            cluster.stopping = True
            cluster.cond.notify_all()
        server.server_close()
        if server.log_file is not None:
            server.log_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
