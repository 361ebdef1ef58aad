"""Read an offline W&B run file (run-*.wandb) back: history rows and config.

The file is LevelDB-log framed (7-byte file header, 32 KiB blocks, 7-byte record headers)
around wandb_internal_pb2.Record messages. Internal format: pinned by the wandb version.
"""
import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768


def iter_raw(path):
    data, pos, buf = Path(path).read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer too small for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        chunk = data[pos:pos + length]
        pos += length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk
            buf = b""


def run_id(path):
    """The run id a run-*.wandb file was written for."""
    for raw in iter_raw(path):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "run":
            return record.run.run_id
    return None


def read_run(path):
    """Return (history rows, config dict) from a run-*.wandb file."""
    history, config = [], {}
    for raw in iter_raw(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind in ("config", "run"):
            items = record.config.update if kind == "config" else record.run.config.update
            for item in items:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return history, config
