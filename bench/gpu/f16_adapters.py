"""Copies LoRA adapters out of the lent GPU machine at half their size.

A call returns at most 8 files of 16 MB each, and the adapters committed under
bench/adapters/ should stay small: each adapter folder named on the command line is written
to OUT_DIR as `<run>__<folder>.safetensors` with its F32 tensors cast to F16 (juris and PEFT
cast adapter weights to the model's dtype at load), and its adapter_config.json beside it as
`<run>__<folder>.json`. Plain Python (the safetensors layout: an 8-byte little-endian header
length, a JSON header, then the raw tensors), so it runs wherever python3 does.
    usage: python3 f16_adapters.py OUT_DIR RUN_DIR/FOLDER...
"""
import array
import json
import os
import shutil
import struct
import sys


def to_f16(path_in: str, path_out: str) -> None:
    with open(path_in, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    out_header, chunks, offset = {}, [], 0
    for name in sorted(header, key=lambda k: header[k]["data_offsets"][0]):
        info = header[name]
        start, end = info["data_offsets"]
        raw = data[start:end]
        if info["dtype"] == "F32":
            values = array.array("f")
            values.frombytes(raw)
            if sys.byteorder != "little":
                values.byteswap()
            raw = struct.pack(f"<{len(values)}e", *values)
            dtype = "F16"
        else:
            dtype = info["dtype"]
        out_header[name] = {"dtype": dtype, "shape": info["shape"], "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if meta is not None:
        out_header["__metadata__"] = meta
    head = json.dumps(out_header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path_out + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for c in chunks:
            f.write(c)
    os.replace(path_out + ".tmp", path_out)


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for folder in sys.argv[2:]:
        folder = folder.rstrip("/")
        weights = os.path.join(folder, "adapter_model.safetensors")
        if not os.path.isfile(weights):
            continue
        tag = f"{os.path.basename(os.path.dirname(folder))}__{os.path.basename(folder)}"
        to_f16(weights, os.path.join(out, tag + ".safetensors"))
        shutil.copy(os.path.join(folder, "adapter_config.json"), os.path.join(out, tag + ".json"))


if __name__ == "__main__":
    main()
