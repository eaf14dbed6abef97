#!/usr/bin/env python3
"""Writes the binary seed inputs of the fuzz targets (init_frame_corpus/, cdp_corpus/, outbox_corpus/).

The committed seeds are this script's output; rerun it after a format change:  python3 tests/fuzz/make_seeds.py
Each seed is a small valid input, so the fuzzer starts from the formats' happy paths.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(corpus, name, data):
    d = os.path.join(HERE, corpus)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- protobuf wire format (enough for init_protocol.proto)
def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def field_bytes(num, b):
    return varint(num << 3 | 2) + varint(len(b)) + b


def frame(payload):
    return struct.pack("<I", len(payload)) + payload


def init_seeds():
    # Byte 0: read size; byte 1: bit 0 zero-copy reads, bit 1 the small cap.
    exec_start = field_bytes(1, b"/bin/sh") + field_bytes(1, b"-c") + field_bytes(1, b"echo hi") + \
        field_bytes(2, b"PATH=/usr/bin:/bin") + field_varint(7, 5000) + field_varint(8, 1)
    req_exec = field_varint(1, 1) + field_bytes(2, exec_start)
    req_write = field_varint(1, 2) + field_bytes(6, field_bytes(1, b"/workspace/a.txt") + field_bytes(2, b"data") +
                                                 field_varint(4, 1))
    req_stdin = field_varint(1, 3) + field_bytes(3, field_varint(1, 1) + field_bytes(2, b"input\n") + field_varint(3, 1))
    resp_output = field_varint(1, 1) + field_bytes(2, field_varint(1, 1) + field_bytes(2, b"hi\n") + field_varint(3, 0))
    resp_end = field_varint(1, 1) + field_bytes(3, field_varint(1, 0))
    resp_error = field_varint(1, 2) + field_bytes(5, field_varint(1, 5) + field_bytes(2, b"no such file"))
    resp_ok = field_varint(1, 3) + field_bytes(4, b"")
    write("init_frame_corpus", "requests.bin", b"\x07\x00" + frame(req_exec) + frame(req_write) + frame(req_stdin))
    write("init_frame_corpus", "responses.bin", b"\x03\x01" + frame(resp_output) + frame(resp_end) + frame(resp_error) +
          frame(resp_ok))
    write("init_frame_corpus", "truncated.bin", b"\x00\x00" + frame(resp_output)[:-2])
    write("init_frame_corpus", "oversized.bin", b"\x01\x02" + struct.pack("<I", 65) + b"x" * 8)
    write("init_frame_corpus", "empty_frames.bin", b"\x1f\x00" + frame(b"") * 3)

    # init_client_fuzz: what sandbox-init answers the client's command (call 1), no prefix bytes.
    def output(stream, data, offset):
        return field_varint(1, 1) + field_bytes(2, field_varint(1, stream) + field_bytes(2, data) + field_varint(3, offset))
    write("init_client_corpus", "exec.bin", frame(output(1, b"hello ", 0)) + frame(output(2, b"warn\n", 0)) +
          frame(output(1, b"world\n", 6)) + frame(resp_end))
    write("init_client_corpus", "exec_error.bin", frame(field_varint(1, 1) + field_bytes(5, field_varint(1, 5) +
                                                                                       field_bytes(2, b"not found"))))
    write("init_client_corpus", "bad_offset.bin", frame(output(1, b"x", 0)) + frame(output(1, b"y", 5)))
    write("init_client_corpus", "wrong_kind.bin", frame(resp_ok) + frame(field_varint(1, 1) + field_bytes(4, b"")))
    write("init_client_corpus", "late_answer.bin", frame(resp_end) + frame(output(1, b"late", 0)) + frame(resp_error))


def cdp_seeds():
    # Byte 0: read size (0: all at once). Messages are JSON texts, each ended by NUL.
    msgs = [
        b'{"id":1,"result":{"frameId":"T","loaderId":"L1"}}',
        b'{"method":"Page.lifecycleEvent","params":{"frameId":"T","loaderId":"L1","name":"load"},"sessionId":"S"}',
        b'{"method":"Runtime.consoleAPICalled","params":{"type":"log","args":[{"type":"string","value":"hi"}]},'
        b'"sessionId":"S"}',
        b'{"method":"Runtime.exceptionThrown","params":{"exceptionDetails":{"text":"Uncaught","lineNumber":3,'
        b'"url":"http://x/","exception":{"description":"Error: boom\\n  at x"}}},"sessionId":"S"}',
        b'{"method":"Network.requestWillBeSent","params":{"requestId":"R1"},"sessionId":"S"}',
        b'{"method":"Network.loadingFinished","params":{"requestId":"R1"},"sessionId":"S"}',
        b'{"method":"Log.entryAdded","params":{"entry":{"level":"error","source":"network","text":"404",'
        b'"url":"http://x/y"}},"sessionId":"S"}',
    ]
    write("cdp_corpus", "page_events.bin", b"\x00" + b"".join(m + b"\0" for m in msgs))
    downloads = [
        b'{"method":"Browser.downloadWillBegin","params":{"guid":"g","url":"http://x/r.pdf",'
        b'"suggestedFilename":"report.pdf"}}',
        b'{"method":"Browser.downloadProgress","params":{"guid":"g","state":"completed","receivedBytes":4}}',
    ]
    write("cdp_corpus", "download.bin", b"\x05" + b"".join(m + b"\0" for m in downloads))
    write("cdp_corpus", "surrogate.bin", b"\x00" + b'{"id":1,"result":{"result":{"type":"string","value":"\\ud800x"}}}\0')
    write("cdp_corpus", "crash.bin", b"\x02" + b'{"method":"Inspector.targetCrashed","params":{},"sessionId":"S"}\0' +
          b'{"method":"Target.detachedFromTarget","params":{"sessionId":"S"}}\0')
    write("cdp_corpus", "not_json.bin", b"\x00" + b'{"id":1,"result":{\0' + b"[" * 40 + b"]" * 40 + b"\0")


# --- outbox journal (agent/fleet/outbox.h)
def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def record(rtype, body):
    header = struct.pack("<IBI", len(body), rtype, crc32c(body))
    return header + struct.pack("<I", crc32c(header)) + body


def append(rid, kind, key, payload):
    return record(1, struct.pack("<QII", rid, len(kind), len(key)) + kind + key + payload)


def ack(rid):
    return record(2, struct.pack("<Q", rid))


def next_id(n):
    return record(3, struct.pack("<Q", n))


def outbox_seeds():
    magic = b"SBXOUTB1"
    write("outbox_corpus", "empty.journal", magic)
    write("outbox_corpus", "pending.journal", magic + append(1, b"outcome", b"lease-1", b"\x08\x01") +
          append(2, b"event", b"lease-1/1", b"payload") + ack(1))
    write("outbox_corpus", "compacted.journal", magic + next_id(7) + append(7, b"outcome", b"lease-9", b"x" * 20))
    torn = magic + append(1, b"outcome", b"lease-1", b"abc") + append(2, b"event", b"k", b"tail")
    write("outbox_corpus", "torn_tail.journal", torn[:-3])
    good = append(1, b"outcome", b"a", b"1")
    bad = bytearray(good)
    bad[20] ^= 0xFF
    write("outbox_corpus", "corrupt_middle.journal", magic + bytes(bad) + append(2, b"outcome", b"b", b"2"))


if __name__ == "__main__":
    init_seeds()
    cdp_seeds()
    outbox_seeds()
