#!/usr/bin/env bash
#
# Prints the IstioOperator for an east-west gateway: the gateway that carries
# cross-network traffic (port 15443) and, for primary-remote meshes, istiod
# (15012) and its webhook (15017) to other clusters.
#
# Usage: gen-eastwest-gateway.sh --network NETWORK [--revision REV]
#        gen-eastwest-gateway.sh --single-cluster [--revision REV]
#        gen-eastwest-gateway.sh --ambient --network NETWORK
# --cluster NAME and --mesh ID are accepted for compatibility and have no effect.

set -euo pipefail

network=""
revision=""
single_cluster=0
ambient=0

while [ "$#" -gt 0 ]; do
  case "$1" in
    --network)        network="$2"; shift 2 ;;
    --revision)       revision="$2"; shift 2 ;;
    --cluster|--mesh) shift 2 ;;
    --single-cluster) single_cluster=1; shift ;;
    --ambient)        ambient=1; shift ;;
    -*)
      echo "Error: Unsupported flag $1" >&2
      exit 1
      ;;
    *)
      echo "Error: Unexpected argument $1" >&2
      exit 1
      ;;
  esac
done

if [ "$single_cluster" -eq 0 ] && [ -z "$network" ]; then
  echo "Must specify either --single-cluster or --network."
  exit 1
fi

if [ "$ambient" -eq 1 ]; then
  if [ -z "$network" ]; then
    echo "Must specify --network with --ambient."
    exit 1
  fi
  cat <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: istio-eastwestgateway
  namespace: istio-system
  labels:
    topology.istio.io/network: "${network}"
spec:
  gatewayClassName: "istio-east-west"
  listeners:
    - name: mesh
      port: 15008
      protocol: HBONE
      tls:
        mode: Terminate
        options:
          gateway.istio.io/tls-terminate-mode: ISTIO_MUTUAL
YAML
  exit 0
fi

multi_network=0
if [ "$single_cluster" -eq 0 ]; then
  multi_network=1
fi

emit() { printf '%s\n' "$@"; }

emit "apiVersion: install.istio.io/v1alpha1" \
     "kind: IstioOperator" \
     "metadata:" \
     "  name: eastwest" \
     "spec:" \
     "  revision: \"${revision}\"" \
     "  profile: empty" \
     "  components:" \
     "    ingressGateways:" \
     "      - name: istio-eastwestgateway" \
     "        label:" \
     "          istio: eastwestgateway" \
     "          app: istio-eastwestgateway"
if [ "$multi_network" -eq 1 ]; then
  emit "          topology.istio.io/network: ${network}"
fi
emit "        enabled: true" \
     "        k8s:"
if [ "$multi_network" -eq 1 ]; then
  emit "          env:" \
       "            # keep traffic that enters through this gateway inside its network" \
       "            - name: ISTIO_META_REQUESTED_NETWORK_VIEW" \
       "              value: ${network}"
fi
emit "          service:" \
     "            ports:"
for port in status-port:15021 tls:15443 tls-istiod:15012 tls-webhook:15017; do
  emit "              - name: ${port%%:*}" \
       "                port: ${port##*:}" \
       "                targetPort: ${port##*:}"
done
emit "  values:" \
     "    gateways:" \
     "      istio-ingressgateway:" \
     "        injectionTemplate: gateway"
if [ "$multi_network" -eq 1 ]; then
  emit "    global:" \
       "      network: ${network}"
fi
