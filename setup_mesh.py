#!/usr/bin/env python3
"""setup-mesh: build and keep a multi-cluster Istio service mesh. Wiring only; the work is in lib/."""
from lib.cli import main

if __name__ == "__main__":
    main()
