"""setup-mesh: build and keep a multi-cluster Istio mesh."""

__version__ = "0.1.0"
