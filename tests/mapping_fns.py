"""Mapping functions used by the tests through ``mapping_fn: "tests.mapping_fns:…"``."""


def to_event(record):
    if record.get("skip"):
        return None
    return {"event_name": record["type"], "external_customer_id": record["user"],
            "properties": {"n": record["n"] * 2}}


#: value → size of a "blob" property inflate() adds (tests/test_input_limits.py)
INFLATE = {50: 33 * 1024 * 1024, 10: 1536 * 1024, 20: 1536 * 1024}


def inflate(record):
    """The generator's event, some of them blown up past the event size limits."""
    size = INFLATE.get(record["properties"]["value"])
    if size:
        record = {**record, "properties": {**record["properties"], "blob": "x" * size}}
    return record
