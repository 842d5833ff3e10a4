"""status, judging certificates: each cluster's cacerts against the workspace's root (and, during a move to
a new root, against the stage), the root bundle istiod took, and the roots' own expiry."""
from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509

from . import certs, invocation, carotation
from .assesscerts import CacertsFinding, CacertsState
from .checks import EXPIRY_WARN_DAYS, WARNING
from .config import MULTIROOT_ENV, Cluster
from .kube import CA_ROOT_CONFIGMAP, Observed
from .names import ISTIO_NAMESPACE
from .statusinputs import Expected
from .statusreport import ClusterStatus, Hints, Problem, iso_utc


def load_cert(pem: bytes | None) -> x509.Certificate | None:
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def judge_roots(ws: Expected, root: x509.Certificate | None, now: dt.datetime, hints: Hints,
                problems: list[Problem]) -> dict[str, Any] | None:
    """Days left for the workspace's root (and, mid-transition, the new one): warning under 30, error expired."""
    if root is None:
        return None
    info = certs.read_cert(ws.root_pem)
    days = info.days_left(now)
    # Mid-transition the old root still signs (stage 1) and is still trusted (stages 1 and 2).
    remedy = (f"{hints.rotate('--root')} (continues the move to the new root already under way)"
              if ws.transition is not None else
              f"{hints.rotate('--root')} (moves the mesh to a new root in three runs, at least a day apart)")
    if days < 0:
        problems.append(Problem("root_ca_expired", f"the mesh's root CA expired on {iso_utc(info.not_after)}: "
                                                   "cross-cluster mTLS fails", remedy))
    elif days < EXPIRY_WARN_DAYS:
        problems.append(Problem("root_ca_expiring", f"the mesh's root CA expires in {days} day(s) "
                                                    f"({iso_utc(info.not_after)})", remedy, severity=WARNING))
    result = {"expires": iso_utc(info.not_after), "days_left": days}
    if ws.new_root_pem:
        new = certs.read_cert(ws.new_root_pem)
        result["new_root"] = {"fingerprint": new.fingerprint, "expires": iso_utc(new.not_after),
                              "days_left": new.days_left(now)}
    return result


def transition_summary(ws: Expected, clusters: list[ClusterStatus], observed: dict[str, Observed],
                       hints: Hints) -> dict[str, Any] | None:
    """Where a move to a new root stands, and the command for its next stage."""
    t = ws.transition
    if t is None:
        return None
    in_step = all(c.cacerts.stage == t.stage for c in clusters)
    since = [carotation.stage_since(t, (observed.get(c.cluster.context) or Observed()).annotations) for c in clusters]
    latest = max((s for s in since if s is not None), default=None)
    # A cluster apply has not set up (added mid-move) gets the stage from apply; a stage run leaves it alone.
    unset = [c.cluster.context for c in clusters if c.reachable
             and (observed.get(c.cluster.context) or Observed()).applied is None]
    if not in_step and unset:
        next_step = f"{hints.apply} (sets up {', '.join(unset)} with the certificates of stage {t.stage})"
    elif not in_step:
        next_step = f"{hints.rotate('--root')} (brings every cluster to stage {t.stage})"
    elif t.stage == carotation.LAST_STAGE:
        becomes = "istiod drops the clusters' former root" if t.foreign_start else "certs/ becomes the new root"
        next_step = f"{hints.rotate('--root')} (completes the transition: {becomes})"
    else:
        ready = latest + carotation.WORKLOAD_CERT_LIFETIME if latest else None
        next_step = (f"{hints.rotate('--root')} from {iso_utc(ready)} (stage {t.stage + 1}: "
                     f"{carotation.STAGES[t.stage + 1]}; --min-wait shortens the 24h wait)")
    return {"stage": t.stage, "stages": carotation.LAST_STAGE, "description": carotation.STAGES[t.stage],
            "foreign_start": t.foreign_start,
            "started": t.started, "in_step": in_step, "since": iso_utc(latest) if in_step else None, "next": next_step}


def judge_cacerts(status: ClusterStatus, cluster: Cluster, seen: Observed, found: CacertsFinding, ws: Expected,
                  hints: Hints, root_fp: str | None, set_up: bool, now: dt.datetime) -> None:
    """The cluster's cacerts as the assessment found it (lib/assesscerts.py), reported; and its expiry."""
    add = status.problems.append
    c = status.cacerts
    c.present = found.state is not CacertsState.ABSENT
    if not c.present:
        if set_up:
            add(Problem("cacerts_missing", "secret cacerts is missing: istiod signs workloads with a self-made CA "
                                           "that no other cluster trusts", hints.apply))
        return
    files = seen.cacerts or {}
    if found.cluster_root is not None:
        c.root_fingerprint = found.cluster_root.fingerprint
    if found.state is CacertsState.OTHER_MOVE:
        # Not this workspace's mesh any more: what differs is the other workspace's doing, and what this
        # workspace would do about it (apply, rotate-certs) is refused.
        c.chains_to_root = found.on_workspace_root
        add(Problem("root_moved_elsewhere", "istio-system records a move to a root this workspace does not hold: "
                                            "another workspace is moving the mesh off this workspace's root",
                    "leave the mesh to the workspace that is moving it (its status follows the move); once the move "
                    "is complete the mesh runs on that workspace's root"))
        return
    if not found.ca_readable:
        add(Problem("cacerts_unreadable", "secret cacerts holds no readable ca-cert.pem",
                    f"`rm -r {hints.path(certs.CERTS_DIR, cluster.name)}`, then {hints.apply} "
                    f"(re-issues the intermediate CA from this workspace's root)"))
        c.chains_to_root = found.on_workspace_root
        return
    info = certs.read_cert(files["ca-cert.pem"])
    c.expires = info.not_after
    c.days_left = info.days_left(now)
    c.roots_trusted = len(set(carotation.split_pems(files.get("root-cert.pem"))))  # distinct: stage 2 repeats one
    c.chains_to = found.chains_to
    t = ws.transition
    if t is not None:  # mid-move a cluster is in step when it holds exactly what the stage says
        c.chains_to_root = c.chains_to is not None
        if found.state is CacertsState.CURRENT:
            c.stage = t.stage
        else:
            add(Problem("root_transition_behind", f"secret cacerts is not at stage {t.stage} of the move to a new "
                                                  f"root ({carotation.STAGES[t.stage]})",
                        f"{hints.rotate('--root')} (brings every cluster to the stage)"))
    elif found.on_workspace_root is not None:
        c.chains_to_root = found.on_workspace_root
        if not c.chains_to_root:
            add(_foreign_root(status, cluster, ws, hints, root_fp,
                              root_fp not in certs.bundle_fingerprints(files.get("root-cert.pem"))))
    _judge_expiry(status, cluster, ws, hints)


def _foreign_root(status: ClusterStatus, cluster: Cluster, ws: Expected, hints: Hints, root_fp: str | None,
                  other_root: bool) -> Problem:
    """cacerts does not chain to the workspace's root: the problem, and the hint that fits the cause.
    ``other_root``: its root bundle does not hold this workspace's root, so apply refuses to replace it
    unless told to (--replace-foreign-ca); one that holds it (a cluster back after a move completed without
    it) a plain apply brings to the workspace's certificates."""
    c = status.cacerts
    local = ws.local_ca.get(cluster.name)
    local_ok = certs.issued_by(local, ws.root_pem)
    apply = invocation.command("apply", "--replace-foreign-ca") if other_root else hints.apply
    replaces = ("; it replaces that cacerts at once: mTLS between workloads breaks until they restart"
                if other_root else "")
    if local_ok:
        hint = f"{apply} (installs certs/{cluster.name}/, which this workspace's root issued{replaces})"
    elif local is None:  # nothing to remove: apply issues one
        hint = f"{apply} (issues the cluster an intermediate CA from this workspace's root{replaces})"
    else:
        hint = (f"`rm -r {hints.path(certs.CERTS_DIR, cluster.name)}`, then {apply} "
                f"(re-issues the intermediate CA from this workspace's root{replaces})")
    what = ("its root-cert.pem is another root" if c.root_fingerprint != root_fp
            else "its ca-cert.pem was not issued by this workspace's root")
    return Problem("cacerts_foreign_root", f"secret cacerts does not chain to this workspace's root CA "
                                           f"({what}): workloads here are not trusted by the other clusters", hint)


def _judge_expiry(status: ClusterStatus, cluster: Cluster, ws: Expected, hints: Hints) -> None:
    """The intermediate CA's days left: an error once expired, a warning under EXPIRY_WARN_DAYS."""
    c = status.cacerts
    if ws.transition is not None:  # rotate-certs alone waits for the move, whose stage 2 re-issues every intermediate
        reissue = reissue_all = (f"{hints.rotate('--root')} (stage 2 of the move to the new root re-issues every "
                                 f"intermediate)")
    else:
        reissue = f"{hints.rotate('--context', cluster.context)} (re-issues it from this workspace's root)"
        reissue_all = (f"{reissue}, or {hints.rotate('--expiring-within', str(EXPIRY_WARN_DAYS))} for every such "
                       f"cluster")
    if c.days_left < 0:
        status.problems.append(Problem("cacerts_expired", f"the intermediate CA in cacerts expired on "
                                                          f"{iso_utc(c.expires)}", reissue))
    elif c.days_left < EXPIRY_WARN_DAYS:
        status.problems.append(Problem("cacerts_expiring", f"the intermediate CA in cacerts expires in "
                                                           f"{c.days_left} day(s) ({iso_utc(c.expires)})",
                                       reissue_all, severity=WARNING))


def word_other_roots(result: list[ClusterStatus], root_fp: str | None, ws: Expected, hints: Hints) -> None:
    """Clusters on the same other root share one cause (one message, one hint naming them all), and say who
    does not trust them; when every cluster holds that root, what is true is that the mesh runs on a root
    this workspace does not hold, and its workloads trust each other."""
    groups: dict[str, list[tuple[ClusterStatus, Problem]]] = {}
    for status in result:
        fp = status.cacerts.root_fingerprint
        for problem in status.problems:
            if problem.code == "cacerts_foreign_root" and fp and fp != root_fp:
                groups.setdefault(fp, []).append((status, problem))
    held = {s.cluster.context: s.cacerts.root_fingerprint for s in result}
    for fp, members in groups.items():
        whole_mesh = all(held[s.cluster.context] == fp for s in result)
        apart = [ctx for ctx, other in held.items() if other and other != fp]
        if whole_mesh:
            every = "every" if len(result) > 1 else "the"
            message = (f"secret cacerts chains to another root than this workspace's, the same in {every} cluster: "
                       f"the mesh runs on a root this workspace does not hold")
        else:
            message = ("secret cacerts chains to another root than this workspace's (its root-cert.pem is another "
                       "root)" + (f": workloads here are not trusted by {', '.join(apart)}" if apart else ""))
        hint = members[0][1].hint if len(members) == 1 else _other_root_hint([s.cluster for s, _ in members],
                                                                                 ws, hints)
        if whole_mesh:
            hint = (f"run setup-mesh from the workspace that holds that root; or {hints.rotate('--root')} (moves the "
                    f"mesh to this workspace's root without downtime, when setup-mesh made that cacerts); or {hint}")
        for _, problem in members:
            problem.message, problem.hint = message, hint


def _other_root_hint(clusters: list[Cluster], ws: Expected, hints: Hints) -> str:
    """One repair for several clusters on another root: intermediates on disk that this workspace's root did
    not issue go first, then apply replaces every such cacerts."""
    stale = [c for c in clusters if load_cert(ws.local_ca.get(c.name)) is not None
             and not certs.issued_by(ws.local_ca.get(c.name), ws.root_pem)]
    apply = invocation.command("apply", "--replace-foreign-ca")
    first = f"`rm -r {' '.join(hints.path(certs.CERTS_DIR, c.name) for c in stale)}`, then " if stale else ""
    return (f"{first}{apply} (gives them intermediate CAs of this workspace's root; it replaces their cacerts at "
            f"once: mTLS between workloads breaks until they restart)")


def judge_istiod_roots(status: ClusterStatus, seen: Observed, published: bytes | None, ws: Expected,
                       hints: Hints) -> None:
    """istiod took the root bundle secret cacerts holds: the bundle it publishes in istio-ca-root-cert is
    that one, byte for byte. istiod takes a changed root-cert.pem only under ISTIO_MULTIROOT_MESH and when
    one bundle contains the other (pilot/pkg/bootstrap/istio_ca.go handleEvent: as bytes up to 1.29, as
    a set of certificates from 1.30); else it keeps the roots, and the intermediate, it had."""
    want = (seen.cacerts or {}).get("root-cert.pem")
    if not want or published is None:  # no cacerts to take, or istiod has published nothing yet
        return
    status.cacerts.istiod_took = published == want
    if status.cacerts.istiod_took or any(p.code == "cacerts_foreign_root" for p in status.problems):
        return  # a cacerts that is not this mesh's is the problem to solve (apply puts back what istiod holds)
    held, wanted = set(carotation.split_pems(published)), set(carotation.split_pems(want))
    deployment = ws.istiod_deployment
    containers = (((seen.deployments.get(deployment) or {}).get("spec") or {}).get("template") or {}).get("spec", {})
    env = {e.get("name"): e.get("value") for c in containers.get("containers") or [] for e in c.get("env") or []}
    if not held & wanted:
        why = ("it signs with a root that is not in cacerts (istiod reads cacerts when it starts, and watches "
               "it only when it was there then)")
    elif str(env.get(MULTIROOT_ENV, "")).lower() not in ("true", "1", "t"):
        why = f"it runs without {MULTIROOT_ENV}=true, so it keeps the roots it started with"
    elif held == wanted:
        why = ("cacerts holds the same roots in another order: istiod before 1.30 takes a changed bundle only "
               "when one contains the other byte for byte (its log says \"Updating new ROOT-CA not supported\")")
    else:
        why = ("neither bundle contains the other, so istiod keeps its own (its log says \"Updating new ROOT-CA "
               "not supported\")")
    stage = f" (stage {ws.transition.stage} of the move to a new root)" if ws.transition else ""
    restart = hints.kubectl(status.cluster, "rollout", "restart", f"deployment/{deployment}", "-n", ISTIO_NAMESPACE)
    status.problems.append(Problem("istiod_roots_not_taken",
        f"istiod did not take the root bundle in secret cacerts{stage}: it publishes {len(held)} root(s) in "
        f"{CA_ROOT_CONFIGMAP}, cacerts holds {len(wanted)}; {why}",
        f"`{restart}` (istiod loads cacerts whole when it starts), then {invocation.command('status')}; "
        f"a change made in the last minute or two may still be on its way to istiod"))
