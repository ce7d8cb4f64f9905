"""Mapping functions used by the tests through ``mapping_fn: "tests.mapping_fns:…"``."""


def to_event(record):
    if record.get("skip"):
        return None
    return {"event_name": record["type"], "external_customer_id": record["user"],
            "properties": {"n": record["n"] * 2}}
