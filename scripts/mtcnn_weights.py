#!/usr/bin/env python3
"""How models/detector/mtcnn.safetensors was made: the MTCNN face detector's weights (P-Net,
R-Net, O-Net; Zhang et al. 2016) as the PyPI package facenet-pytorch 2.6.0 (MIT) ships them,
converted to safetensors. Needs only numpy: the legacy torch.save files are read with pickle.

    pip download --no-deps facenet-pytorch==2.6.0 -d /tmp/fnp
    python3 scripts/mtcnn_weights.py /tmp/fnp/facenet_pytorch-2.6.0-py3-none-any.whl models/detector/mtcnn.safetensors
"""
import io
import json
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict

import numpy as np

DTYPES = {"FloatStorage": np.float32}


class Storage:
    def __init__(self, dtype):
        self.dtype = dtype
        self.data = None


def rebuild_tensor(storage, offset, size, stride, *_):
    return (storage, offset, tuple(size), tuple(stride))


class Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return rebuild_tensor
        if module == "torch" and name in DTYPES:
            return name
        raise pickle.UnpicklingError(f"unexpected {module}.{name}")

    def persistent_load(self, saved_id):
        _, storage_type, key, _location, _size = saved_id[:5]
        return self.storages.setdefault(key, Storage(DTYPES[storage_type]))


def load_legacy(raw):
    """A state dict saved by torch.save before PyTorch 1.6 (not a zip file)."""
    f = io.BytesIO(raw)
    for _ in range(3):  # magic number, protocol version, system info
        pickle.load(f)
    storages = {}
    state = Unpickler(f, storages).load()
    for key in pickle.load(f):
        (count,) = struct.unpack("<q", f.read(8))
        s = storages[key]
        s.data = np.frombuffer(f.read(count * np.dtype(s.dtype).itemsize), dtype=s.dtype)
    out = OrderedDict()
    for name, (storage, offset, size, stride) in state.items():
        item = storage.data.itemsize
        out[name] = np.lib.stride_tricks.as_strided(
            storage.data[offset:], shape=size, strides=[s * item for s in stride]
        ).copy()
    return out


def main(wheel, dest):
    tensors = OrderedDict()
    with zipfile.ZipFile(wheel) as z:
        for net in ("pnet", "rnet", "onet"):
            for name, array in load_legacy(z.read(f"facenet_pytorch/data/{net}.pt")).items():
                tensors[f"{net}.{name}"] = array
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    header["__metadata__"] = {"source": "facenet-pytorch 2.6.0 (MIT), facenet_pytorch/data/{pnet,rnet,onet}.pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(dest, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    for name, a in tensors.items():
        print(name, a.shape)


if __name__ == "__main__":
    main(*sys.argv[1:])
