"""A TensorBoard scalar writer with no dependencies (TensorBoard itself is not needed to write its files).

An event file is a TFRecord stream of `Event` protocol buffers; a scalar is Event{wall_time, step,
summary{value{tag, simple_value}}}. Both formats are small and stable, so they are written here by hand rather than
pulling in TensorFlow or tensorboardX. `read_scalars` reads them back (tests; a quick look without TensorBoard).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2, _varint(len(data)) + data)


def encode_event(wall_time: float, step: int, file_version: str = "", scalars: dict[str, float] | None = None,
                 ) -> bytes:
    """Serialise an Event: wall_time (1, double), step (2, int64), file_version (3), summary (5)."""
    msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(int(step)))
    if file_version:
        msg += _bytes_field(3, file_version.encode())
    if scalars:
        summary = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
                           for tag, value in scalars.items())
        msg += _bytes_field(5, summary)
    return msg


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", _masked(crc32c(header))) + data + struct.pack("<I", _masked(crc32c(data)))


class TensorBoardWriter:
    """Appends scalars to `logdir/events.out.tfevents.<time>.<host>`."""

    def __init__(self, logdir: str | os.PathLike) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.path = self.logdir / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._f = open(self.path, "ab")
        self._f.write(_record(encode_event(time.time(), 0, file_version="brain.Event:2")))
        self._f.flush()

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        """Write one event with a scalar per finite-or-not numeric value (tags `prefix + key`)."""
        scalars = {prefix + k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and
                   not isinstance(v, bool)}
        if scalars:
            self._f.write(_record(encode_event(time.time(), step, scalars=scalars)))
            self._f.flush()

    def close(self) -> None:
        """Close the file."""
        if not self._f.closed:
            self._f.close()


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


def _parse(buf: bytes) -> dict[int, list]:
    fields: dict[int, list] = {}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def read_scalars(path: str | os.PathLike) -> list[tuple[int, str, float]]:
    """[(step, tag, value)] from an event file, checking every record's checksums."""
    data = Path(path).read_bytes()
    out, i = [], 0
    while i < len(data):
        header = data[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", data[i + 8:i + 12])
        payload = data[i + 12:i + 12 + n]
        (pcrc,) = struct.unpack("<I", data[i + 12 + n:i + 16 + n])
        if hcrc != _masked(crc32c(header)) or pcrc != _masked(crc32c(payload)):
            raise ValueError(f"{path}: bad checksum in the record at byte {i}")
        i += 16 + n
        event = _parse(payload)
        step = event.get(2, [0])[0]
        for summary in event.get(5, []):
            for value in _parse(summary).get(1, []):
                v = _parse(value)
                out.append((step, v[1][0].decode(), struct.unpack("<f", v[2][0])[0]))
    return out
