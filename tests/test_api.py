"""io/api.py: the off-hot-path client (requests) and check's SDK look-ups, against the stand-in."""

from __future__ import annotations

import pytest
from flexprice_mock import MockFlexprice
from pydantic import SecretStr

from flexprice_beam.core.config import FlexpriceOutput
from flexprice_beam.io.api import (
    ApiClient,
    InsecureTransportError,
    Kind,
    Lookups,
    redact,
    request_headers,
    secret_values,
)


def _out(**kw) -> FlexpriceOutput:
    return FlexpriceOutput(**{"api_host": "127.0.0.1:9", "api_key": "k", "scheme": "http", **kw})


def test_headers_and_secrets():
    cfg = _out(environment_id="env_1", headers={"X-Gateway-Token": "gw"})
    assert request_headers(cfg, "fp_key") == {
        "x-api-key": "fp_key", "Content-Type": "application/json",
        "Accept": "application/json", "User-Agent": "flexprice-beam",
        "X-Environment-ID": "env_1", "X-Gateway-Token": "gw"}
    assert "X-Environment-ID" not in request_headers(_out(), "fp_key")
    assert secret_values(cfg, "fp_key") == ["fp_key", "gw"]
    assert redact("key 'fp\\nx' or fp\nx or fp", ["fp\nx"]) == "key '***' or *** or fp"


def test_plain_http_off_this_machine_is_refused_by_both_clients():
    unchecked = FlexpriceOutput.model_construct(**{**_out().__dict__,
                                                   "api_host": "api.example.com"})
    for client in (ApiClient, Lookups):
        with pytest.raises(InsecureTransportError, match="refusing plain http"):
            client(unchecked)


def test_extra_headers_and_the_environment_reach_the_server():
    with MockFlexprice(api_key="k", gateway_headers={"X-Gateway-Token": "gw #1"}) as m:
        cfg = _out(api_host=m.host_port)
        with ApiClient(cfg) as api:
            assert api.get("/v1/events").status == 401
        good = _out(api_host=m.host_port, headers={"X-Gateway-Token": "gw #1"})
        with ApiClient(good) as api:
            reply = api.get("/v1/events", page_size=1)
        assert reply.kind is Kind.ACCEPTED and reply.data["events"] == []
        lookups = Lookups(good)
        try:
            assert lookups.features().kind is Kind.ACCEPTED
            assert lookups.customer("nobody").status == 404
        finally:
            lookups.close()


def test_self_hosted_key_needs_the_environment_header():
    with MockFlexprice(api_key="scoped", config_key="cfg-key", environment_id="env_local",
                       seed_defaults=True) as m:
        for cls in (ApiClient, Lookups):
            without = cls(_out(api_host=m.host_port, api_key="cfg-key"))
            with_env = cls(_out(api_host=m.host_port, api_key="cfg-key",
                                environment_id="env_local"))
            ask = (lambda c: c.get("/v1/events")) if cls is ApiClient else (
                lambda c: c.features())
            try:
                refused, ok = ask(without), ask(with_env)
            finally:
                without.close()
                with_env.close()
            assert refused.status == 403 and "environment" in refused.body.lower()
            assert ok.kind is Kind.ACCEPTED, ok


def test_errors_never_quote_a_header_secret():
    """A value the HTTP stack cannot send is quoted in its error: redacted (the config
    refuses such values; this is belt and braces)."""
    cfg = FlexpriceOutput.model_construct(**{**_out().__dict__,
                                             "headers": {"X-T": SecretStr("tok\nsecret")}})
    for client in (ApiClient(cfg), Lookups(cfg)):
        reply = client.get("/v1/events") if isinstance(client, ApiClient) else client.features()
        client.close()
        assert reply.status is None and "secret" not in reply.error, reply.error
        assert reply.describe().startswith("no response: ")


def test_unreachable_is_no_response():
    with ApiClient(_out(timeout="1s")) as api:
        reply = api.get("/v1/events")
    assert reply.kind is Kind.RETRY and "Connection refused" in reply.error
    assert reply.error.endswith("(http://127.0.0.1:9)")
