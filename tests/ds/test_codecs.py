"""Control-socket messages and well-known service payloads: exact bytes, round trips, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.ds import control
from backend.ds.control import ControlError, Op
from backend.ds.messages import DsError
from backend.ds.framework import DomainConfig, DsFramework, PortConfig
from backend.ds.services import ServiceError, domain_shutdown, md_update, var_config

MESSAGES = [
    control.Register(7, True, ((2, 1), (1, 0)), "dr-cpu"),
    control.HandleRequest(Op.READY, 8, 0x1_8000_0002),
    control.Lookup(9, False, 4, "pri"),
    control.Send(10, 0x1_0000_0001, b"payload"),
    control.NameToDhdl(11, "ldg1"),
    control.Reply(12, 6, b"\x01"),
    control.Registered(0x1_0000_0001, (1, 0), 5, False, "md-update"),
    control.Unregistered(0x1_0000_0001),
    control.DataEvent(0x1_0000_0001, b"data"),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_control_round_trip(message) -> None:
    decode = control.decode_request if message.__class__ in (control.Register, control.HandleRequest, control.Lookup, control.Send, control.NameToDhdl) else control.decode_agent_message
    assert decode(control.encode(message)) == message


def test_control_register_layout() -> None:
    assert control.encode(control.Register(1, True, ((1, 0),), "ab")).hex() == "01" "00000001" "01" "01" "00010000" "6162"


@pytest.mark.parametrize("record", [b"", b"\x7f", b"\x01\x00", b"\x01\x00\x00\x00\x01\x00\x05", b"\x02\x00\x00\x00\x01\x00"])
def test_bad_control_records_are_refused(record) -> None:
    with pytest.raises(ControlError):
        control.decode_request(record)


@given(st.binary(max_size=64))
def test_fuzz_control_decoders(record: bytes) -> None:
    for decode in (control.decode_request, control.decode_agent_message):
        try:
            decode(record)
        except ControlError:
            pass


def test_batch_layout_and_lone_records_stay_bare() -> None:
    one, two = control.encode(control.NameToDhdl(1, "a")), control.encode(control.HandleRequest(Op.READY, 2, 3))
    assert control.pack([one]) == [one]
    (batch,) = control.pack([one, two])
    assert batch.hex() == "40" "00000006" + one.hex() + "0000000d" + two.hex()
    assert control.unpack(batch) == [one, two]
    assert control.unpack(one) == [one]


def test_batches_never_exceed_a_record() -> None:
    big = control.encode_send(0, 1, b"x" * 30000)
    records = control.pack([big, big, big, b"\x05"])
    assert [len(control.unpack(r)) for r in records] == [2, 2]
    assert all(len(r) <= control.MAX_RECORD for r in records)
    assert len(control.pack([control.encode_send(0, 1, b"x" * control.MAX_SEND)] * 2)) == 2


@pytest.mark.parametrize("record", [b"\x40", b"\x40\x00\x00", b"\x40\x00\x00\x00\x00", b"\x40\x00\x00\x00\x05\x01", b"\x40\x00\x00\x00\x01\x40", b"\x40\x00\x00\x00\x01\x05\x00"])
def test_bad_batches_are_refused(record: bytes) -> None:
    with pytest.raises(ControlError):
        control.unpack(record)


@given(st.lists(st.binary(min_size=1, max_size=40000).filter(lambda m: m[0] != Op.BATCH), max_size=8))
def test_pack_then_unpack_gives_the_messages_back(messages: list[bytes]) -> None:
    records = control.pack(messages)
    assert all(len(r) <= control.MAX_RECORD for r in records)
    assert [m for r in records for m in control.unpack(r)] == messages


@given(st.binary(max_size=64))
def test_fuzz_batch_unpacking(tail: bytes) -> None:
    try:
        messages = control.unpack(bytes([Op.BATCH]) + tail)
    except ControlError:
        return
    assert messages and all(m and m[0] != Op.BATCH for m in messages)


@given(st.binary(max_size=64))
def test_fuzz_framework_requests_give_a_reply_or_a_control_error(record: bytes) -> None:
    framework = DsFramework(DomainConfig("primary", 0, (PortConfig(1, "ldg1", 5, False),)))
    instance = framework.open_instance()
    try:
        framework.request(instance, record)
    except ControlError:
        return
    outputs = framework.take_output()
    replies = [control.decode_agent_message(r) for i, r in outputs if i == instance]
    assert replies or record[0] == Op.SEND  # an unnumbered send is the only request without a reply


@given(st.binary(max_size=96))
def test_fuzz_port_bytes_never_crash_the_framework(data: bytes) -> None:
    framework = DsFramework(DomainConfig("primary", 0, (PortConfig(1, "ldg1", 5, False),)))
    framework.link_up(1)
    try:
        framework.port_data(1, data)
    except DsError:
        pass  # a header announcing an absurd length: the edge resets the channel
    framework.take_port_output()


def test_domain_shutdown_bytes() -> None:
    request = domain_shutdown.Request(0x0102030405060708, 5000)
    assert request.encode().hex() == "0102030405060708" "00001388" "00000000"
    assert domain_shutdown.Request.decode(request.encode()) == request
    answer = domain_shutdown.Response(1, 0)
    assert answer.encode().hex() == "0000000000000001" "00000000" "00000000"  # Linux: 16 bytes
    assert domain_shutdown.Response.decode(domain_shutdown.Response(1, 2, "busy").encode()) == domain_shutdown.Response(1, 2, "busy")


def test_md_update_bytes() -> None:
    assert md_update.Request(3).encode().hex() == "0000000000000003"
    assert md_update.Response(3, 0).encode().hex() == "0000000000000003" "00000000" "00000000"
    assert md_update.Response.decode(md_update.Response(3, 1).encode()) == md_update.Response(3, 1)


def test_var_config_bytes() -> None:
    set_request = var_config.encode(var_config.SetRequest("auto-boot?", "false"))
    assert set_request == b"\0\0\0\0" b"auto-boot?\0false\0" + b"\0" * 3  # padded to 4
    assert var_config.decode(set_request) == var_config.SetRequest("auto-boot?", "false")
    assert var_config.decode(var_config.encode(var_config.DeleteRequest("x"))) == var_config.DeleteRequest("x")
    response = var_config.Response(var_config.Type.SET_RESP, var_config.Result.SUCCESS)
    assert var_config.encode(response).hex() == "00000002" "00000000"
    with pytest.raises(ValueError):
        var_config.encode(var_config.SetRequest("n", "v" * 600))


@pytest.mark.parametrize("payload", [b"", b"\0\0\0\x09", b"\0\0\0\0name-without-nul", b"\0\0\0\x02\0\0"])
def test_bad_var_config_messages(payload: bytes) -> None:
    with pytest.raises(ServiceError):
        var_config.decode(payload)


@given(st.binary(max_size=48))
def test_fuzz_service_decoders(payload: bytes) -> None:
    for decode in (domain_shutdown.Request.decode, domain_shutdown.Response.decode, md_update.Request.decode, md_update.Response.decode, var_config.decode):
        try:
            decode(payload)
        except ServiceError:
            pass
