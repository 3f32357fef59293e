"""fleet/events.py and fleet/inbox.py: signing, every field checked, rate and duplicates. Pure."""

from __future__ import annotations

import json
import math
from ipaddress import ip_network
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blocker.fleet.events import (
    MAX_ENTRY_BYTES,
    PAYLOAD_FIELD,
    SIGNATURE_FIELD,
    FleetEvent,
    decode,
    decode_snapshot,
    entry,
    from_payload,
    sign,
    snapshot_value,
)
from blocker.fleet.inbox import Inbox

KEY = b"k" * 32
T0 = 1_800_000_000.0


def ban(
    target: str = "203.0.113.7",
    *,
    expires: float = T0 + 600,
    event_id: str = "a" * 32,
    origin: str = "web-1",
) -> FleetEvent:
    return FleetEvent(
        "ban",
        event_id,
        origin,
        ip_network(target),
        "probes",
        T0,
        expires,
        "score 5.0 >= 5 within 60s",
    )


def signed(data: object, key: bytes = KEY) -> dict[bytes, bytes]:
    payload = json.dumps([data]).encode()
    return {PAYLOAD_FIELD: payload, SIGNATURE_FIELD: sign(key, payload)}


def good() -> dict[str, object]:
    data = json.loads(ban().payload())
    assert isinstance(data, dict)
    return data


def test_an_entry_decodes_to_the_same_event() -> None:
    for event in (ban(), ban("2001:db8::/48", expires=math.inf), ban("198.51.100.0/24")):
        assert decode(KEY, entry(KEY, [event])) == [event]
        assert decode_snapshot(KEY, snapshot_value(KEY, event)) == event
        assert from_payload(event.payload()) == event


def test_the_payload_carries_the_contract_fields() -> None:
    assert set(good()) == {"v", "kind", "id", "origin", "target", "jail", "at", "expires", "reason"}
    assert good()["expires"] == T0 + 600  # absolute epoch seconds, UTC
    assert json.loads(ban(expires=math.inf).payload())["expires"] is None


def test_unsigned_and_badly_signed_entries_are_dropped() -> None:
    fields = entry(KEY, [ban()])
    assert decode(KEY, {PAYLOAD_FIELD: fields[PAYLOAD_FIELD]}) == "unsigned"
    assert decode(KEY, {**fields, SIGNATURE_FIELD: b""}) == "unsigned"
    assert decode(b"x" * 32, fields) == "bad_signature"  # another key
    assert decode(KEY, {**fields, SIGNATURE_FIELD: b"0" * 64}) == "bad_signature"
    assert decode(KEY, {**fields, SIGNATURE_FIELD: b"short"}) == "bad_signature"
    tampered = fields[PAYLOAD_FIELD].replace(b"203.0.113.7", b"203.0.113.8")
    assert decode(KEY, {**fields, PAYLOAD_FIELD: tampered}) == "bad_signature"
    single = ban().payload()
    assert decode_snapshot(KEY, single) == "unsigned"
    assert decode_snapshot(KEY, b"0" * 64 + b" " + single) == "bad_signature"


@pytest.mark.parametrize(
    "fields",
    [
        None,
        [],
        "text",
        {},
        {PAYLOAD_FIELD: 7},
        {b"x": b"y"},
        {PAYLOAD_FIELD: "str, not bytes"},
    ],
)
def test_wrongly_typed_entries_are_malformed(fields: object) -> None:
    assert decode(KEY, fields) == "malformed"


def test_oversized_entries_are_dropped_before_any_parsing() -> None:
    huge = b"[" + b" " * (MAX_ENTRY_BYTES + 1) + b"]"
    assert decode(KEY, {PAYLOAD_FIELD: huge, SIGNATURE_FIELD: sign(KEY, huge)}) == "oversized"
    extra = {**entry(KEY, [ban()]), b"more": b"x"}
    assert decode(KEY, extra) == "oversized"
    big = b" " * 3000 + ban().payload()
    assert decode_snapshot(KEY, sign(KEY, big) + b" " + big) == "oversized"


def test_an_entry_holds_up_to_500_events_and_a_bad_one_costs_only_itself() -> None:
    events = [ban(f"2001:db8::{i:x}", event_id=f"{i:032x}") for i in range(1, 501)]
    assert decode(KEY, entry(KEY, events)) == events
    with pytest.raises(AssertionError):
        entry(KEY, [*events, ban()])
    mixed = json.dumps([good(), {**good(), "target": "nonsense"}]).encode()
    assert decode(KEY, {PAYLOAD_FIELD: mixed, SIGNATURE_FIELD: sign(KEY, mixed)}) == [
        ban(),
        "malformed",
    ]
    for shape in (b"[]", b"{}", json.dumps([good()] * 501).encode()):
        assert decode(KEY, {PAYLOAD_FIELD: shape, SIGNATURE_FIELD: sign(KEY, shape)}) == (
            "malformed"
        )


def test_a_long_reason_is_cut_so_the_event_stays_valid() -> None:
    event = FleetEvent(
        "ban", "a" * 32, "web-1", ip_network("203.0.113.7"), "probes", T0, T0 + 600, "x" * 5000
    )
    [decoded] = cast(list[FleetEvent], decode(KEY, entry(KEY, [event])))
    assert isinstance(decoded, FleetEvent) and decoded.reason == "x" * 400


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"kind": "nuke"},
        {"id": "short"},
        {"origin": ""},
        {"origin": "a b"},
        {"target": "203.0.113.7/24"},  # host bits set
        {"target": "not an address"},
        {"target": 7},
        {"jail": "Bad Jail"},
        {"jail": None},
        {"reason": 1},
        {"reason": "x" * 401},
        {"at": "soon"},
        {"at": True},
        {"at": 1.0},
        {"expires": "never"},
        {"expires": 1e300},
        {"expires": float("nan")},
    ],
)
def test_signed_garbage_is_malformed(change: dict[str, object]) -> None:
    data = {**good(), **change}
    try:
        fields = signed(data)
    except ValueError:
        pytest.skip("not JSON")
    assert decode(KEY, fields) == ["malformed"]
    assert decode(KEY, signed({"k": [1] * 10})) == ["malformed"]
    assert (
        decode(KEY, {PAYLOAD_FIELD: b"{not json", SIGNATURE_FIELD: sign(KEY, b"{not json")})
        == "malformed"
    )
    deeper = b"[" * 100_000 + b"]" * 100_000  # Python's JSON parser recurses: RecursionError
    assert decode(KEY, {PAYLOAD_FIELD: deeper, SIGNATURE_FIELD: sign(KEY, deeper)}) == ("malformed")


def ids(n: int) -> list[FleetEvent]:
    return [ban(f"203.0.113.{i}", event_id=f"{i:032x}") for i in range(1, n + 1)]


def test_the_inbox_hands_out_at_most_rate_a_second_and_the_cursor_of_the_last() -> None:
    inbox = Inbox(rate=3)
    events = ids(7)
    inbox.add([(f"1-{i}", e) for i, e in enumerate(events)])
    first = inbox.take(100.0)
    assert (first.events, first.cursor) == (events[:3], "1-2")
    assert inbox.due(100.0) == pytest.approx(100.0 + 1 / 3)
    assert inbox.take(100.0).cursor is None  # no token left
    later = inbox.take(101.0)
    assert (later.events, later.cursor) == (events[3:6], "1-5")
    assert inbox.take(102.0).events == events[6:]
    assert inbox.due(102.0) is None


def test_dropped_entries_move_the_cursor_and_duplicates_are_passed_over() -> None:
    inbox = Inbox(rate=100)
    one, two = ids(2)
    inbox.add([("1-0", one), ("1-1", None), ("1-2", one), ("1-3", two)])
    taken = inbox.take(0.0)
    assert (taken.events, taken.cursor, taken.duplicates) == ([one, two], "1-3", 1)


def test_a_snapshot_moves_the_cursor_only_once_it_is_all_applied() -> None:
    inbox = Inbox(rate=2)
    events = ids(3)
    inbox.add_snapshot(events, "9-0")
    part = inbox.take(0.0)
    assert (part.events, part.cursor) == (events[:2], None)  # a restart loads it again
    rest = inbox.take(1.0)
    assert (rest.events, rest.cursor) == (events[2:], "9-0")


def test_own_events_are_echoes_and_others_are_checked() -> None:
    mine, theirs = ban(origin="web-1"), ban("203.0.113.8", origin="web-2")
    assert decode(KEY, entry(KEY, [mine, theirs]), own="web-1") == ["echo", theirs]
    assert decode(KEY, entry(KEY, [mine]), own=None) == [mine]


@pytest.mark.parametrize(
    "text",
    ["fe80::1%eth0", "1.2.3", "2001:db8::1::2", "::ffff:1.2.3", " 203.0.113.7", "203.0.113.7 "],
)
def test_a_target_that_is_no_address_is_malformed(text: str) -> None:
    assert decode(KEY, signed({**good(), "target": text})) == ["malformed"]


def test_the_inbox_hands_out_at_most_a_slice_per_take() -> None:
    inbox = Inbox(rate=1000)
    events = ids(10)
    inbox.add([(f"1-{i}", e) for i, e in enumerate(events)])
    assert inbox.take(0.0, most=4).events == events[:4]
    assert inbox.take(0.0, most=4).events == events[4:8]


@given(
    reason=st.text(max_size=600),
    at=st.floats(946684800, 7258118400),
    expires=st.one_of(st.just(math.inf), st.floats(946684800, 7258118400)),
)
def test_any_reason_and_time_round_trip(reason: str, at: float, expires: float) -> None:
    event = FleetEvent(
        "ban", "f" * 32, "web-1", ip_network("2001:db8::7"), "probes", at, expires, reason
    )
    [decoded] = cast(list[FleetEvent], decode(KEY, entry(KEY, [event])))
    assert decoded == FleetEvent(
        "ban", "f" * 32, "web-1", ip_network("2001:db8::7"), "probes", at, expires, reason[:400]
    )


@pytest.mark.parametrize("value", [None, 7, "text", ["list"], b"", b"no signature here"])
def test_wrongly_typed_or_unsigned_snapshot_values_are_dropped(value: object) -> None:
    expected = "unsigned" if isinstance(value, bytes) else "malformed"
    assert decode_snapshot(KEY, value) == expected


@pytest.mark.parametrize("payload", [b"{not json", b"[1]", b"7", b'{"v": 1}', b"[" * 2000])
def test_signed_snapshot_garbage_is_malformed(payload: bytes) -> None:
    assert decode_snapshot(KEY, sign(KEY, payload) + b" " + payload) == "malformed"


@pytest.mark.parametrize("signature", [7, "a" * 64, None, [b"x"]])
def test_a_wrongly_typed_signature_is_unsigned(signature: object) -> None:
    fields: dict[bytes, object] = {PAYLOAD_FIELD: entry(KEY, [ban()])[PAYLOAD_FIELD]}
    fields[SIGNATURE_FIELD] = signature
    assert decode(KEY, fields) == "unsigned"
