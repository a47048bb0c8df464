"""A small reader of W&B's run file (``run-<id>.wandb``), written from its published format.

The file is a 7-byte header starting ``:W&B`` followed by LevelDB-log blocks of 32 KiB; each record has a 7-byte
header (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) and the assembled payload is a
``wandb_internal_pb2.Record``.
"""

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> list:
    """Every ``Record`` of a run file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    found, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too small for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0:  # zero padding up to the end of the block
            pos += left - HEADER
            continue
        chunk, pos = data[pos:pos + length], pos + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
    return found


def history(path: Path) -> list[dict]:
    """The logged rows (``run.log`` calls) as ``{key: value}`` dicts (values JSON-decoded)."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def metric_definitions(path: Path) -> list:
    """The ``define_metric`` records, in order."""
    return [r.metric for r in records(path) if r.WhichOneof("record_type") == "metric"]
