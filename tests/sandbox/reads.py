"""``kubectl get RESOURCE [NAME] -n NS|-A [-l SELECTOR] -o json`` for the tests' own looks at a cluster,
answered over HTTP in the test process, as kubectl would print it.

The tests look at the clusters many thousands of times, and each look through kubectl is a process
(about 40 ms of CPU with the API server's part) in a suite that is CPU-bound. setup-mesh itself always
runs the real kubectl; only these reads, which check what it did, are answered here, and only in the
simple form above; anything else (another output, several resources, a name across namespaces, a
resource name that is ambiguous or unknown) goes to kubectl. The resource is found as kubectl finds it:
by plural, singular, short name or kind in the API server's discovery, optionally ``.group``. The
answer is kubectl's: the object or a ``List`` whose items carry their kind and apiVersion, without
managedFields (kubectl hides them by default), and for a missing object exit code 1 with
``Error from server (NotFound): ...``.
"""
from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

_FLAGS_WITH_VALUE = {"-n": "namespace", "--namespace": "namespace", "-l": "selector", "--selector": "selector",
                     "-o": "output", "--output": "output"}


@dataclass(frozen=True)
class Resource:
    group_version: str  # "v1", "apps/v1"
    plural: str
    kind: str
    namespaced: bool
    names: frozenset[str]  # what kubectl takes for it: plural, singular, short names, kind (lower case)

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]

    def path(self, namespace: str | None, name: str | None) -> str:
        prefix = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        scope = f"/namespaces/{namespace}" if self.namespaced and namespace else ""
        return f"{prefix}{scope}/{self.plural}" + (f"/{urllib.parse.quote(name)}" if name else "")


def parse(args: tuple[str, ...]) -> dict | None:
    """The parts of a ``get`` this module answers; None for any other form."""
    if len(args) < 2 or args[0] != "get":
        return None
    found: dict = {"names": [], "all": False}
    rest = list(args[1:])
    while rest:
        arg = rest.pop(0)
        key, _, value = arg.partition("=")
        if key in _FLAGS_WITH_VALUE:
            if not value:
                if not rest:
                    return None
                value = rest.pop(0)
            found[_FLAGS_WITH_VALUE[key]] = value
        elif arg in ("-A", "--all-namespaces"):
            found["all"] = True
        elif arg.startswith("-"):
            return None
        else:
            found["names"].append(arg)
    names = found.pop("names")
    if found.get("output") != "json" or not 1 <= len(names) <= 2 or any("," in n or "/" in n for n in names):
        return None
    found["resource"], found["name"] = names[0], (names[1] if len(names) > 1 else None)
    if found["name"] and (found["all"] or found.get("selector")):
        return None
    return found


class Reader:
    """One emulated API server's answers to the simple gets, with its discovery kept between reads."""

    def __init__(self, base_url: str, token: str):
        self.base_url, self.token = base_url, token
        self._resources: list[Resource] | None = None

    def get(self, argv: list[str], request: dict) -> subprocess.CompletedProcess | None:
        resource = self._resolve(request["resource"])
        if resource is None:
            return None
        namespace = None if request["all"] else request.get("namespace")
        if resource.namespaced and namespace is None and not request["all"]:
            return None  # the context's own namespace: kubectl knows it
        query = {"labelSelector": request["selector"]} if request.get("selector") else {}
        status, body = self.request(resource.path(namespace, request["name"]), query)
        if status == 404 and request["name"]:
            # kubectl prints the server's Status message after its reason (k8s.io/kubectl/pkg/cmd/util/helpers.go
            # StandardErrorMessage): for a missing object, and for a type gone since discovery was read.
            return subprocess.CompletedProcess(argv, 1, "", f"Error from server (NotFound): {body.get('message')}\n")
        if status != 200:
            return None
        if request["name"]:
            shown = _without_managed_fields(body)
        else:
            items = [_without_managed_fields({"apiVersion": resource.group_version, "kind": resource.kind, **item})
                     for item in body.get("items") or []]
            shown = {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}
        return subprocess.CompletedProcess(argv, 0, json.dumps(shown, indent=4) + "\n", "")

    def _resolve(self, word: str) -> Resource | None:
        """The one resource ``word`` names; None when it names none (after a fresh discovery: a CRD may
        be new) or several (kubectl's choice among groups is kubectl's)."""
        if self._resources is None:
            self._resources = self._discover()
        matches = _matching(self._resources, word)
        if not matches:
            self._resources = self._discover()
            matches = _matching(self._resources, word)
        return matches[0] if len(matches) == 1 else None

    def _discover(self) -> list[Resource]:
        found: list[tuple[str, dict]] = []
        _, core = self.request("/api/v1")
        found += [("v1", r) for r in core.get("resources") or []]
        _, groups = self.request("/apis")
        for group in groups.get("groups") or []:
            version = group["preferredVersion"]["groupVersion"]
            _, listing = self.request(f"/apis/{version}")
            found += [(version, r) for r in listing.get("resources") or []]
        return [Resource(gv, r["name"], r["kind"], bool(r.get("namespaced")), frozenset(
                    n.lower() for n in [r["name"], r.get("singularName") or "", r["kind"], *(r.get("shortNames") or [])]
                    if n)) for gv, r in found if "/" not in r["name"]]

    def request(self, path: str, query: dict | None = None) -> tuple[int, dict]:
        """GET ``path``: the status code and the JSON body (a Status for an error)."""
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}


def _matching(resources: list[Resource], word: str) -> list[Resource]:
    """The resources ``word`` names: ``name`` or ``name.group``, by plural, singular, short name or kind, as
    kubectl's RESTMapper matches them (k8s.io/client-go/restmapper/shortcut.go and discovery.go,
    k8s.io/apimachinery/pkg/api/meta/restmapper.go)."""
    word = word.lower()
    exact = [r for r in resources if word in r.names]
    if exact:
        return exact
    name, _, group = word.partition(".")
    return [r for r in resources if group and name in r.names and r.group == group]


def _without_managed_fields(obj: dict) -> dict:
    """kubectl get hides metadata.managedFields unless --show-managed-fields (k8s.io/kubectl/pkg/cmd/get/get.go,
    printers' omitManagedFields)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj
