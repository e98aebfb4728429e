import pytest

from orchestrator.inject.races.gdbstub import (GdbError, StopReply, breakpoint_packet, checksum, decode_packet, encode_packet,
                                  escape, parse_memory, parse_registers, parse_stop_reply,
                                  read_memory_packet, split_frame, unescape, vcont_packet)


def test_encode_packet_has_the_checksum_of_its_payload():
    assert encode_packet("?") == b"$?#3f"
    assert encode_packet("vCont;c:2") == b"$vCont;c:2#" + f"{checksum(b'vCont;c:2'):02x}".encode()


def test_escaping_round_trips_the_special_bytes():
    raw = b"a#b$c}d*e"
    assert escape(raw) == b"a}\x03b}\x04c}]d}\x0ae"
    assert unescape(escape(raw)) == raw
    assert decode_packet(encode_packet(raw)) == raw


def test_run_length_encoding_in_replies_is_expanded():
    # '0* ' : '0' then ' ' (32) - 29 = 3 more
    assert unescape(b"0* 1") == b"00001"
    assert decode_packet(b"$0* 1#" + f"{checksum(b'0* 1'):02x}".encode()) == b"00001"


def test_decode_refuses_a_bad_checksum_and_a_non_packet():
    with pytest.raises(GdbError, match="bad checksum"):
        decode_packet(b"$OK#00")
    with pytest.raises(GdbError, match="not a packet"):
        decode_packet(b"OK")


def test_split_frame_drops_acks_and_waits_for_the_checksum():
    assert split_frame(b"+$OK#9a$T05") == (b"$OK#9a", b"$T05")
    assert split_frame(b"$OK#9") == (None, b"$OK#9")
    assert split_frame(b"+++") == (None, b"")


def test_stop_replies_name_the_vcpu_thread():
    assert parse_stop_reply("T05thread:02;") == StopReply(5, 2)
    assert parse_stop_reply("T02thread:p1.0a;") == StopReply(2, 10)
    assert parse_stop_reply("S05") == StopReply(5, None)
    with pytest.raises(GdbError, match="not a stop reply"):
        parse_stop_reply("OK")


def test_registers_are_little_endian_in_gdb_order():
    values = list(range(1, 18))
    payload = "".join(v.to_bytes(8, "little").hex() for v in values) + "46020000"  # + eflags
    regs = parse_registers(payload)
    assert regs["rax"] == 1 and regs["rdi"] == 6 and regs["rsp"] == 8 and regs["rip"] == 17
    with pytest.raises(GdbError, match="short"):
        parse_registers("00" * 10)


def test_memory_replies_are_checked_for_length_and_errors():
    assert parse_memory("0000000000eaffff", 8) == bytes.fromhex("0000000000eaffff")
    with pytest.raises(GdbError, match="refused"):
        parse_memory("E14", 8)
    with pytest.raises(GdbError, match="4 bytes"):
        parse_memory("00000000", 8)


def test_packets_for_breakpoints_reads_and_partial_continue():
    assert breakpoint_packet(0xFFFFFFFF813B91F0, True) == "Z0,ffffffff813b91f0,1"
    assert breakpoint_packet(0x10, False) == "z0,10,1"
    assert read_memory_packet(0xFFFFFFFF825D8598, 8) == "mffffffff825d8598,8"
    assert vcont_packet("c") == "vCont;c"
    assert vcont_packet("c", (2,)) == "vCont;c:2"
    assert vcont_packet("s", (1, 11)) == "vCont;s:1;s:b"
    with pytest.raises(ValueError):
        vcont_packet("r")


class ScriptedStub:
    """A gdbstub on a unix socket answering like QEMU: `?` -> T05, qC -> QC1, Hg -> OK, with
    (QEMU <= 7.2) or without (QEMU >= 8) an unasked `T02thread:01;` when the debugger connects."""

    def __init__(self, unasked_stop: bool):
        import socket
        import tempfile
        import threading
        self.folder = tempfile.mkdtemp(prefix="gdbstub-test-", dir="/tmp")
        self.path = f"{self.folder}/gdb.sock"
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(1)
        self.unasked_stop = unasked_stop
        self.received: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        conn, _ = self.server.accept()
        if self.unasked_stop:
            conn.sendall(encode_packet("T02thread:01;"))
        buffer = b""
        answers = {"?": "T05thread:01;", "qC": "QC1", "Hg1": "OK"}
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            buffer += chunk
            while True:
                frame, buffer = split_frame(buffer)
                if frame is None:
                    break
                payload = decode_packet(frame).decode()
                self.received.append(payload)
                conn.sendall(b"+" + encode_packet(answers.get(payload, "")))
        conn.close()

    def close(self):
        import shutil
        self.server.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.mark.parametrize("unasked_stop", [True, False], ids=["qemu-7.2", "qemu-8-and-later"])
def test_attach_asks_for_the_stop_reply_and_leaves_nothing_stale(unasked_stop):
    from orchestrator.inject.races.gdbstub import RemoteTarget
    stub = ScriptedStub(unasked_stop)
    target = RemoteTarget(stub.path, timeout=2)
    try:
        stop = target.attach(timeout=1)
        assert stop.thread == 1
        assert stub.received[:2] == ["?", "qC"]
        # the next request gets its own answer, not a stop reply left over from connecting
        target.checked("Hg1", timeout=1)
        received = [line for line in target.transcript if line.startswith("<-")]
        assert received.count("<- T02thread:01;") == (1 if unasked_stop else 0)
    finally:
        target.close()
        stub.close()


class SteppingTarget:
    """A vCPU stopped at a breakpoint whose single steps move it only from the `moves_on`-th on."""

    def __init__(self, moves_on: int, at: int = 0xFFFFFFFF81000010):
        self.moves_on, self.rip, self.steps, self.breakpoints = moves_on, at, 0, {at}

    def set_breakpoint(self, address, insert=True):
        (self.breakpoints.add if insert else self.breakpoints.discard)(address)

    def send_resume(self, payload):
        assert payload == "vCont;s:2" and self.rip not in self.breakpoints  # the breakpoint is out for the step
        self.steps += 1
        if self.steps >= self.moves_on:
            self.rip += 3

    def wait_stop(self, timeout):
        return StopReply(5, 2)

    def registers(self, thread):
        return {"rip": self.rip}


def test_a_single_step_that_did_not_move_the_vcpu_is_tried_again():
    from orchestrator.inject.races.gdbstub import step_over
    target = SteppingTarget(moves_on=2)
    step_over(target, 2, 0xFFFFFFFF81000010)
    assert target.steps == 2 and target.rip == 0xFFFFFFFF81000013
    assert 0xFFFFFFFF81000010 in target.breakpoints  # back in place
    stuck = SteppingTarget(moves_on=99)
    with pytest.raises(GdbError, match="vCPU 1 did not step past 0xffffffff81000010 in 3 single steps"):
        step_over(stuck, 2, 0xFFFFFFFF81000010)
    assert 0xFFFFFFFF81000010 in stuck.breakpoints
