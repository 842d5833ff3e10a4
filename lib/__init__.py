"""setup-mesh: build and keep a multi-cluster Istio mesh."""
