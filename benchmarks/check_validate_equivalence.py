"""Does the validation fast path answer exactly like the pydantic model?

    .venv/bin/python benchmarks/check_validate_equivalence.py [--examples 30000]

``transforms.validate._clean_fast`` skips ``FlexpriceEvent`` for the common shape of event.
Whenever it accepts an event, the model must accept it too and dump the same dict, in the
same key order, with the same value types and the same orjson bytes. Events it declines go
through the model as before. Hypothesis draws mostly-valid events with perturbations (wrong
types, str subclasses, blank/overlong strings, odd timestamps, NaN/inf, bools, extra keys).
Exit code 0 = no difference found.
"""

from __future__ import annotations

import argparse
import sys

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexprice_beam.core.events import FlexpriceEvent
from flexprice_beam.transforms import validate


class _Str(str):
    pass


TEXT = st.one_of(st.text(max_size=5), st.sampled_from(["", " ", "\t", "\u00a0", "a" * 255, "a" * 256,
                                                      "é" * 255, "x"]),
                 st.builds(_Str, st.text(max_size=3)))
TIMESTAMPS = st.one_of(st.sampled_from([
    "2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123Z", "2026-01-01T00:00:00z",
    "2026-01-01T00:00:00+02:00", "2026-01-01T00:00:00", "2026-13-01T00:00:00Z",
    "2026-01-01 00:00:00Z", "garbage", "", "2026-01-01t00:00:00Z", "2026-01-01T00:00:00.1234567Z",
    "2026-01-01T00:00:00+0200", "2026-02-30T00:00:00Z"]), st.text(max_size=25))
VALUES = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   TEXT, st.none(), st.lists(st.integers(), max_size=2))
ANY = st.one_of(TEXT, st.none(), st.integers(), st.booleans())


@st.composite
def events(draw):
    e = {}
    for k in ("event_name", "external_customer_id", "event_id"):
        if draw(st.integers(0, 19)):
            e[k] = draw(st.one_of(TEXT, ANY)) if draw(st.integers(0, 4)) == 0 else "name"
    if draw(st.integers(0, 19)):
        e["timestamp"] = (draw(st.one_of(TIMESTAMPS, ANY)) if draw(st.integers(0, 2)) == 0
                          else "2026-01-01T00:00:00.123Z")
    if draw(st.booleans()):
        e["properties"] = (
            draw(st.one_of(st.dictionaries(st.one_of(TEXT, st.integers()), VALUES, max_size=4),
                           st.none(), st.lists(st.integers(), max_size=1)))
            if draw(st.integers(0, 2)) == 0 else
            draw(st.dictionaries(st.text(max_size=3),
                                 st.one_of(st.integers(), st.floats(), st.text(max_size=3)),
                                 max_size=3)))
    for k in ("source", "customer_id"):
        if draw(st.booleans()):
            e[k] = draw(ANY)
    if draw(st.integers(0, 20)) == 0:
        e["extra"] = 1
    items = list(e.items())
    draw(st.randoms()).shuffle(items)
    return dict(items)


def _dumps(d):
    try:
        return orjson.dumps(d)
    except TypeError:  # integers beyond 64 bits: both paths then dead-letter the event
        return "unserialisable"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--examples", type=int, default=30_000)
    args = ap.parse_args(argv)
    if not validate._FAST:
        print("the fast path is off (FlexpriceEvent changed): nothing to compare")
        return 0
    seen = {"fast": 0, "model": 0}

    @settings(max_examples=args.examples, suppress_health_check=list(HealthCheck), deadline=None,
              database=None)
    @given(events())
    def check(e):
        fast = validate._clean_fast(e)
        if fast is None:
            seen["model"] += 1
            return
        seen["fast"] += 1
        model = FlexpriceEvent.model_validate(e).model_dump(exclude_none=True)  # must accept
        assert model == fast and list(model) == list(fast), (e, model, fast)
        assert [type(v) for v in model["properties"].values()] == \
            [type(v) for v in fast["properties"].values()], (e, model, fast)
        assert _dumps(model) == _dumps(fast), (e, model, fast)

    check()
    print(f"no difference: {seen['fast']} events took the fast path, {seen['model']} the model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
