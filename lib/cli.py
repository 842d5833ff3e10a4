"""Command-line wiring (typer). Each command parses options and hands over to lib."""
from __future__ import annotations

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Build and keep a multi-cluster Istio service mesh across Kubernetes clusters.",
)


@app.command("prep-mesh")
def prep_mesh() -> None:
    """Prepare a workspace: topology.yaml, base.yaml and the mesh's root CA. Touches no cluster."""


@app.command()
def apply() -> None:
    """Make the clusters match topology.yaml."""


@app.command()
def teardown() -> None:
    """Remove everything setup-mesh created from every cluster."""


def main() -> None:
    app()
