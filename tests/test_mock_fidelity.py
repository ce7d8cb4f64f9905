"""The stand-in answers byte for byte as the Flexprice server does (tests/fixtures/flexprice).

Each recorded case is replayed against ``MockFlexprice`` in its default (faithful) mode: the
status, the exact body bytes, the headers that matter, and which events the server has
published when it answers (a bulk 400 publishes the events before the bad one).
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import orjson
import pytest
from flexprice_mock import MockFlexprice

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "flexprice" / "responses.json")
                      .read_text(encoding="utf-8"))
KEYS = FIXTURES["keys"]
ENV = FIXTURES["environment_id"]


@pytest.fixture(scope="module")
def server():
    with MockFlexprice(api_key=KEYS["scoped"], config_key=KEYS["config"],
                       forbidden_key=KEYS["forbidden"], environment_id=ENV) as m:
        yield m


def _body(case: dict) -> bytes:
    if "raw" in case:
        return case["raw"].encode()
    if "events_count" in case:
        one = {"event_name": "a", "external_customer_id": "c", "event_id": "e"}
        return orjson.dumps({"events": [dict(one, event_id=f"e{i}") for i in range(case["events_count"])]})
    if case.get("oversize"):
        return b'{"events":[]}' + b" " * ((32 << 20) + 1024)
    return orjson.dumps(case["json"])


def _send(mock: MockFlexprice, case: dict) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(mock.host, mock.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    key = case.get("key", "scoped")
    if key is not None:
        headers["x-api-key"] = KEYS.get(key, key)
    if case.get("environment"):
        headers["X-Environment-ID"] = case["environment"]
    conn.request("POST", case["path"], body=_body(case), headers=headers)
    resp = conn.getresponse()
    resp.data = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


@pytest.mark.parametrize("case", FIXTURES["cases"], ids=[c["name"] for c in FIXTURES["cases"]])
def test_answer_is_byte_identical_to_the_server(server, case):
    server.reset()
    resp = _send(server, case)
    assert resp.status == case["status"]
    assert resp.data.decode() == case["body"]  # type: ignore[attr-defined]
    assert resp.getheader("Content-Type") == FIXTURES["content_type"]
    for name, value in case.get("headers", {}).items():
        assert resp.getheader(name) == value
    assert sorted(e["event_id"] for e in server.events()) == sorted(case["published"])
