"""State tokens: what a streamed series carries from one request to the next.

The server keeps nothing between requests. A response in `mode=stream` ends each
series with a token, and the next request for that series sends it back with the new
observations only; any replica, worker, batch job or Spark task can continue the
series, and sending the same token twice gives the same answer.

A token is base64 text of

    b"RNNS" | version (u8) | CRC-32 of what follows (u32) | header length (u16)
    | header (JSON: model, series, date, steps, rows) | arrays, little-endian, in order

`model` is the identity of the model that wrote it (run id and a hash of the
weights), `series` the series_id the row sent ("" when none); `steps` counts the
observations it has seen and `rows` the context rows it carries. The checksum catches
accidents (a truncated copy, a changed character), not a client: so a token is decoded
only after its length is checked against the most this model's state can need, and its
content (shapes, finite values, counts; the model checks the values' ranges) is checked
before any work. Every failure is a request error naming the row.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from models.served import bad, short

MAGIC, VERSION = b"RNNS", 1
PREFIX = struct.Struct("<4sBIH")  # magic, version, crc32, header length
MAX_HEADER = 1_200  # bytes: an identity, a series_id of at most 256 characters, a date, counts
MAX_STEPS = 10 ** 12


@dataclass
class Layout:
    """What one model's tokens hold: the identity they must carry and, per array, its
    dtype and its width per row (`None`: one row of that width; `"rows"`: `rows` rows)."""

    model: str
    arrays: dict[str, tuple[str, int, str | None]]  # name -> (dtype, width, "rows" or None)
    max_rows: int  # a token keeps min(steps, max_rows) rows (at most max_rows: `free_rows`)
    min_steps: int = 0  # the fewest steps a token can have seen
    free_rows: bool = False  # rows not tied to steps (audio samples not yet framed)

    def nbytes(self, rows: int) -> int:
        return sum(np.dtype(d).itemsize * w * (rows if r else 1)
                   for d, w, r in self.arrays.values())

    def max_chars(self) -> int:
        """The longest base64 text a token of this model can be."""
        return 4 * -(-(PREFIX.size + MAX_HEADER + self.nbytes(self.max_rows)) // 3)


def encode(layout: Layout, series: str, date: str, steps: int,
           arrays: dict[str, np.ndarray]) -> str:
    rows = len(next((arrays[n] for n, (_, _, r) in layout.arrays.items() if r), []))
    header = json.dumps({"model": layout.model, "series": series, "date": date,
                         "steps": int(steps), "rows": rows}, separators=(",", ":")).encode()
    body = header + b"".join(np.ascontiguousarray(arrays[n], np.dtype(d).newbyteorder("<"))
                             .tobytes() for n, (d, _, _) in layout.arrays.items())
    prefix = PREFIX.pack(MAGIC, VERSION, zlib.crc32(body), len(header))
    return base64.b64encode(prefix + body).decode("ascii")


def decode(text, layout: Layout, i: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, arrays) of row i's token, or a request error naming the row."""
    where = f"row {i}, column 'state'"
    if text == "":
        raise bad(f"{where}: empty: send null (or no state) to start a series, or the state "
                  "the series' last response row returned")
    if not isinstance(text, str):
        raise bad(f"{where}: expected the text a previous response returned, "
                  f"got {type(text).__name__}")
    if len(text) > layout.max_chars():
        raise bad(f"{where}: {len(text):,} characters is longer than any state of this model "
                  f"({layout.max_chars():,} at most): not a state this model returned")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"{where}: not base64 text: the state is damaged") from None
    if len(raw) < PREFIX.size or raw[:4] != MAGIC:
        raise bad(f"{where}: not a state token (damaged or truncated)")
    _, version, crc, size = PREFIX.unpack_from(raw)
    if version != VERSION:
        raise bad(f"{where}: state format version {version}; this model reads version "
                  f"{VERSION}: start the series afresh (send it without a state)")
    body = raw[PREFIX.size:]
    if zlib.crc32(body) != crc or size > min(MAX_HEADER, len(body)):
        raise bad(f"{where}: the checksum does not match: the state is damaged or truncated")
    header = _header(body[:size], where)
    steps, rows = header["steps"], header["rows"]
    kept = rows <= layout.max_rows if layout.free_rows else rows == min(steps, layout.max_rows)
    if steps < layout.min_steps or not kept:
        raise bad(f"{where}: impossible counts: {steps} steps seen, {rows} rows kept")
    if header["model"] != layout.model:
        raise bad(f"{where}: the state of another model ({header['model']!r}); this is "
                  f"{layout.model!r}: send the state this model returned, or none to start "
                  "afresh")
    if len(body) - size != layout.nbytes(rows):
        raise bad(f"{where}: {len(body) - size} bytes of arrays for {rows} rows; this model's "
                  "state has other shapes")
    arrays, at = {}, size
    for name, (dtype, width, by_rows) in layout.arrays.items():
        n = width * (rows if by_rows else 1)
        values = np.frombuffer(body, np.dtype(dtype).newbyteorder("<"), n, at)
        at += values.nbytes
        if not np.isfinite(values).all():
            raise bad(f"{where}: NaN or infinity in its {name}: the state is not one this "
                      "model returned")
        arrays[name] = values.astype(dtype).reshape((rows, width) if by_rows else (width,))
    return header, arrays


def _header(text: bytes, where: str) -> dict:
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        header = None
    kinds = {"model": str, "series": str, "date": str, "steps": int, "rows": int}
    if not isinstance(header, dict) or set(header) != set(kinds) or not all(
            type(header[k]) is t for k, t in kinds.items()):
        raise bad(f"{where}: its header is not a state's header (model, series, date, steps, "
                  "rows)")
    if not (0 <= header["rows"] <= MAX_STEPS and 0 <= header["steps"] <= MAX_STEPS):
        raise bad(f"{where}: impossible counts: {header['steps']} steps seen, "
                  f"{header['rows']} rows kept")
    return header


def unreachable(arrays: dict, bounds: np.ndarray | None, steps: int) -> str | None:
    """Why a token's recurrent state (`hidden`) is beyond what the network can reach (each
    number within `bounds`, an LSTM's cell within the steps seen), or None."""
    if "hidden" in arrays and (np.abs(arrays["hidden"]) > np.minimum(bounds, steps + 1)).any():
        return "its recurrent state is beyond what the network can reach"
    return None


def same_series(header: dict, sent: str, i: int, noun: str = "") -> None:
    """A state continues the series it names, when both it and the row name one."""
    if header["series"] and sent and header["series"] != sent:
        raise bad(f"row {i}, column 'state': the state of {noun}{short(header['series'])}, "
                  f"sent for {short(sent)}")
