"""What the plan shows of an edit of base.yaml: each changed value, as the user wrote it."""
from lib.yamldiff import diff


def _described(old, new):
    return [d.describe() for d in diff(old, new)]


def test_a_string_that_yaml_would_read_as_something_else_is_shown_in_quotes():
    # "true" → true changes what istioctl gets; unquoted both would show as `true → true`.
    assert _described({"proxyMetadata": {"ISTIO_META_DNS_CAPTURE": "true"}},
                      {"proxyMetadata": {"ISTIO_META_DNS_CAPTURE": True}}) == [
        '~ proxyMetadata.ISTIO_META_DNS_CAPTURE: "true" → true']
    assert _described({"a": 5, "b": "null", "c": "1.30"}, {"a": "5", "b": None, "c": 1.3}) == [
        '~ a: 5 → "5"', '~ b: "null" → null', '~ c: "1.30" → 1.3']


def test_plain_strings_stay_bare_and_added_or_removed_mappings_show_their_leaves():
    assert _described({"meshConfig": {"accessLogFile": "/dev/stdout"}},
                      {"meshConfig": {"accessLogFile": "/dev/null", "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}}) == [
        "~ meshConfig.accessLogFile: /dev/stdout → /dev/null",
        "+ meshConfig.outboundTrafficPolicy.mode: REGISTRY_ONLY"]
    assert _described({"a": {"b": " x"}}, {}) == ['- a.b: " x"']
