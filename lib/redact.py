"""Remove key material and credentials from anything that is printed or logged."""
from __future__ import annotations

import re

_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?(-----END \1-----|\Z)", re.S)
# kubeconfig / secret fields whose values are credentials, in YAML or JSON form.
_FIELDS = re.compile(
    r"""(?P<key>["']?(?:token|client-key-data|client-certificate-data|certificate-authority-data|password|"""
    r"""ca-key\.pem|ca\.crt|id-token|refresh-token|access-token)["']?\s*[:=]\s*)(?P<val>["']?[^\s"',}]+["']?)""",
    re.I,
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
# Long base64 runs (secret data, JWTs) carry keys or tokens; nothing a user needs to read is that long.
_B64 = re.compile(r"[A-Za-z0-9+/_-]{120,}={0,2}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")

REDACTED = "[redacted]"


def _looks_encoded(run: str) -> bool:
    """Encoded data mixes cases and digits throughout; a long path or name does not."""
    upper = sum(c.isupper() for c in run)
    digits = sum(c.isdigit() for c in run)
    return upper >= len(run) // 10 and digits >= len(run) // 20


def redact(text: str) -> str:
    if not text:
        return text
    text = _PEM.sub(lambda m: f"[redacted {m.group(1).lower()}]", text)
    text = _FIELDS.sub(lambda m: m.group("key") + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    text = _B64.sub(lambda m: REDACTED if _looks_encoded(m.group(0)) else m.group(0), text)
    return text
