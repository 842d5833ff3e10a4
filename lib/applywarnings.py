"""What apply says before it plans, from topology.yaml, base.yaml and the reads: shapes Istio calls alpha,
clusters --context leaves out that could not be read or run the other data plane, Gateway API CRDs older
than Istio expects."""
from __future__ import annotations

from .config import AMBIENT, SIDECAR, Topology
from .gatewayapi import expected_version, older_than_needed
from .kube import Observed
from .reporter import Reporter


def left_out_unread(contexts: set[str], observed: dict[str, Observed], reporter: Reporter) -> None:
    """The clusters --context leaves out are read too, for their secrets: one that could not be read is said."""
    for context in sorted(contexts):
        reporter.warn(f"could not read current state of {context}: {observed[context].error} (its remote secret in "
                      f"the clusters chosen is left as it is)")


def single_network_ambient(topology: Topology, ambient: bool, reporter: Reporter) -> None:
    if ambient and not topology.multi_network and len(topology.clusters) > 1:
        reporter.warn(f"an ambient mesh on one network ({topology.networks[0]}) is alpha in Istio (untested "
                      f"upstream); across networks it is beta since Istio 1.29")


def after_reads(topology: Topology, observed: dict[str, Observed], only: set[str] | None, ambient: bool,
                istio_version: str | None, reporter: Reporter) -> None:
    if ambient:
        _old_gateway_api(topology, observed, istio_version, reporter)
    _other_data_plane_left_out(topology, observed, only, AMBIENT if ambient else SIDECAR, reporter)


def _other_data_plane_left_out(topology: Topology, observed: dict[str, Observed], only: set[str] | None,
                               mode: str, reporter: Reporter) -> None:
    """--context leaves out clusters that apply set up in the other data-plane mode: after the run the mesh runs
    both, and setup-mesh gives each cluster the east-west gateway of its own mode only (sidecar mode's passes
    mTLS through on 15443, ambient's takes HBONE on 15008), so traffic between networks from one kind to the
    other crosses no gateway it can use."""
    if only is None:
        return
    left = [c.context for c in topology.clusters if c.context not in only and (seen := observed.get(c.context))
            and seen.reachable and seen.recorded_data_plane not in (None, mode)]
    if left:
        other = AMBIENT if mode == SIDECAR else SIDECAR
        reporter.warn(f"base.yaml sets the {mode} data plane, and --context leaves out {', '.join(left)}, which "
                      f"run{'s' * (len(left) == 1)} the {other} one: the mesh runs both until apply moves "
                      f"{'it' if len(left) == 1 else 'them'} too, and traffic from one network to another between "
                      f"clusters of different data planes crosses no east-west gateway it can use (apply without "
                      f"--context moves every cluster)")


def _old_gateway_api(topology: Topology, observed: dict[str, Observed], istio_version: str | None,
                     reporter: Reporter) -> None:
    for cluster in topology.clusters:
        seen = observed.get(cluster.context)
        older = seen and seen.gateway_api and older_than_needed(seen.gateway_api, expected_version(istio_version))
        if older:
            reporter.warn(f"{cluster.context}: {older}")
