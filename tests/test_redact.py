from lib.redact import redact

KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAx\n-----END RSA PRIVATE KEY-----"


def test_pem_blocks_tokens_and_long_base64_are_removed():
    import base64

    blob = base64.b64encode(bytes(range(256)) * 2).decode()
    text = f"before\n{KEY}\nafter token: abc.def-ghi\nAuthorization: Bearer s3cr3t\ndata {blob}"
    out = redact(text)
    assert "BEGIN RSA PRIVATE KEY" not in out and "MIIEpAIBAAKCAQEAx" not in out
    assert "abc.def-ghi" not in out and "s3cr3t" not in out and blob[:40] not in out
    assert out.startswith("before\n") and "after" in out


def test_ordinary_text_is_kept():
    text = "kubectl --context cluster1 apply -f overlays/cluster1.yaml exited with code 1"
    assert redact(text) == text


def test_long_paths_are_not_mistaken_for_encoded_data():
    import base64
    import os

    path = "/home/someone/projects/" + "/".join(["platform-team-multicluster-workspaces"] * 4) + "/certs"
    assert redact(f"wrote {path}") == f"wrote {path}"
    blob = base64.b64encode(os.urandom(120)).decode()
    assert blob not in redact(f"data: x\n{blob}")


def test_each_credential_field_is_redacted_whatever_its_value_looks_like():
    # A value too short or too plain for the base64 rule is still a credential under these names, in a
    # kubeconfig, a secret's data or JSON (kubectl's -o json, istioctl's errors).
    for field in ("token", "client-key-data", "client-certificate-data", "certificate-authority-data", "password",
                  "ca-key.pem", "ca.crt", "id-token", "refresh-token", "access-token"):
        for line in (f"{field}: c2hvcnQ=", f'"{field}": "c2hvcnQ="', f"  {field}=c2hvcnQ="):
            out = redact(line)
            assert "c2hvcnQ" not in out and "[redacted]" in out, (field, line, out)
            assert field in out, "the field's name stays, to say what was removed"
