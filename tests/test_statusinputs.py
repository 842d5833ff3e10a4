"""What status reads from the workspace before it reads any cluster."""
from __future__ import annotations

from types import SimpleNamespace

from lib import certs
from lib.carotation import Transition, next_dir, save_transition
from lib.statusinputs import status_workspace
from tests.test_rotation_logic import _files
from tests.test_status import _ca, _pem, _topology

BASE = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {"profile": "default"}}


def test_an_intermediate_key_that_is_not_its_certificates_is_judged_except_during_a_root_move(tmp_path):
    roots = _ca("Root CA"), _ca("Root CA")
    topology = _topology(tmp_path)
    cert_dir = certs.certs_dir(tmp_path)
    cert_dir.mkdir()
    (cert_dir / certs.ROOT_CERT).write_bytes(_pem(roots[0][0]))
    for cluster in topology.clusters:
        (cert_dir / cluster.name).mkdir()
        for name, data in _files(_ca("Intermediate CA", issuer=roots[0]), roots[0]).items():
            (cert_dir / cluster.name / name).write_bytes(data)
    loaded = SimpleNamespace(topology=topology, base=BASE)
    assert status_workspace(tmp_path, loaded).unkeyed == frozenset()

    # c2 holds c3's key: istiod would not start on that pair.
    (cert_dir / "c2" / "ca-key.pem").write_bytes((cert_dir / "c3" / "ca-key.pem").read_bytes())
    assert status_workspace(tmp_path, loaded).unkeyed == {"c2"}

    # During a move to a new root its stages decide what each cluster holds, and rotate-certs re-issues
    # the intermediates: apply does not refuse, and status does not judge them either.
    save_transition(tmp_path, Transition(1, "ab" * 32, "cd" * 32, "2026-12-01T00:00:00Z"))
    (next_dir(tmp_path) / certs.ROOT_CERT).write_bytes(_pem(roots[1][0]))
    assert status_workspace(tmp_path, loaded).unkeyed == frozenset()
