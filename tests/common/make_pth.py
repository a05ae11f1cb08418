#!/usr/bin/env python3
"""Writes PyTorch-format .pth checkpoints WITHOUT torch (stdlib only), for hrk's loader tests.

Usage: make_pth.py OUTDIR

torch.save's pickle names a few globals (torch._utils._rebuild_tensor_v2, torch.FloatStorage,
...) and refers to storages through persistent ids. Stand-in modules registered under those
names let the stdlib Pickler emit byte-for-byte the same opcodes. Files are written in the zip
format (torch >= 1.6) and the legacy format (torch < 1.6).

OUTDIR/manifest.json lists every case with the tensors the loader must return (after the
`module.` prefix is stripped): key, dtype (f32/f64/i64 after conversion), shape, and values
computed here independently of the file encoding.
"""
import collections
import io
import json
import pickle
import struct
import sys
import types
import zipfile

# ---- stand-ins for the torch names that appear in a checkpoint's pickle ------------------
torch_mod = types.ModuleType("torch")
utils_mod = types.ModuleType("torch._utils")
torch_mod._utils = utils_mod
sys.modules["torch"] = torch_mod
sys.modules["torch._utils"] = utils_mod


def _stand_in_function(module, name):
    def f(*args):
        raise RuntimeError("stand-in only")

    f.__module__, f.__name__, f.__qualname__ = module, name, name
    setattr(sys.modules[module], name, f)
    return f


rebuild_tensor_v2 = _stand_in_function("torch._utils", "_rebuild_tensor_v2")
rebuild_parameter = _stand_in_function("torch._utils", "_rebuild_parameter")

# storage class name -> (struct code, element size, loaded dtype)
STORAGE_TYPES = {
    "FloatStorage": ("f", 4, "f32"),
    "DoubleStorage": ("d", 8, "f64"),
    "HalfStorage": ("e", 2, "f32"),
    "BFloat16Storage": (None, 2, "f32"),
    "LongStorage": ("q", 8, "i64"),
}
STORAGE_CLASSES = {}
for _name in STORAGE_TYPES:
    _cls = type(_name, (), {})
    _cls.__module__ = "torch"
    _cls.__qualname__ = _name
    setattr(torch_mod, _name, _cls)
    STORAGE_CLASSES[_name] = _cls


def bf16_bits(x):
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    assert bits & 0xFFFF == 0, f"{x} is not exactly representable in bf16"
    return bits >> 16


def exact(kind, x):
    """The value after a round trip through the storage type."""
    code = STORAGE_TYPES[kind][0]
    if kind == "BFloat16Storage":
        bf16_bits(x)
        return float(x)
    if code == "q":
        return int(x)
    return struct.unpack("<" + code, struct.pack("<" + code, x))[0]


class Storage:
    def __init__(self, kind, key, values):
        self.kind, self.key = kind, key
        self.values = [exact(kind, v) for v in values]

    @property
    def numel(self):
        return len(self.values)

    def raw(self):
        if self.kind == "BFloat16Storage":
            return b"".join(struct.pack("<H", bf16_bits(v)) for v in self.values)
        code = STORAGE_TYPES[self.kind][0]
        return struct.pack("<%d%s" % (len(self.values), code), *self.values)


class StorageView:
    """A legacy view of part of a root storage (element offset and count)."""

    def __init__(self, root, view_key, offset, numel):
        self.root, self.view_key, self.offset, self.numel = root, view_key, offset, numel
        self.kind = root.kind
        self.values = root.values[offset : offset + numel]


class Tensor:
    def __init__(self, storage, offset, size, stride=None, parameter=False):
        if stride is None:  # contiguous
            stride, acc = [], 1
            for d in reversed(size):
                stride.insert(0, acc)
                acc *= d
        self.storage, self.offset, self.size, self.stride = storage, offset, list(size), list(stride)
        self.parameter = parameter

    def __reduce_ex__(self, protocol):
        args = (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict())
        if self.parameter:
            return (rebuild_parameter, ((rebuild_tensor_v2, args), False, collections.OrderedDict()))
        return (rebuild_tensor_v2, args)

    def expected_values(self):
        """Gathers the elements by strides, row-major (independent of the Rust code)."""
        out = []
        n = 1
        for d in self.size:
            n *= d
        for flat in range(n):
            rem, pos = flat, self.offset
            for d in range(len(self.size) - 1, -1, -1):
                pos += (rem % self.size[d]) * self.stride[d]
                rem //= self.size[d]
            out.append(self.storage.values[pos])
        return out


# A Parameter pickles as _rebuild_parameter(_rebuild_tensor_v2(...), requires_grad, hooks):
# the inner call is a REDUCE nested inside the outer call's argument tuple.
class _Call:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce_ex__(self, protocol):
        return (self.func, self.args)


def _param_reduce(self, protocol):
    args = (self.storage, self.offset, tuple(self.size), tuple(self.stride), False, collections.OrderedDict())
    return (rebuild_parameter, (_Call(rebuild_tensor_v2, args), False, collections.OrderedDict()))


class ZipPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", STORAGE_CLASSES[obj.kind], obj.key, "cpu", obj.numel)
        return None


class LegacyPickler(pickle.Pickler):
    def __init__(self, f, protocol):
        super().__init__(f, protocol)
        self.roots = collections.OrderedDict()

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            self.roots.setdefault(obj.key, obj)
            return ("storage", STORAGE_CLASSES[obj.kind], obj.key, "cpu", obj.numel, None)
        if isinstance(obj, StorageView):
            root = obj.root
            self.roots.setdefault(root.key, root)
            return ("storage", STORAGE_CLASSES[root.kind], root.key, "cpu", root.numel,
                    (obj.view_key, obj.offset, obj.numel))
        return None


def storages_of(obj, acc):
    if isinstance(obj, Tensor):
        s = obj.storage.root if isinstance(obj.storage, StorageView) else obj.storage
        acc.setdefault(s.key, s)
    elif isinstance(obj, dict):
        for v in obj.values():
            storages_of(v, acc)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            storages_of(v, acc)
    return acc


def write_zip(path, obj, protocol=2, compression=zipfile.ZIP_STORED, archive="archive"):
    buf = io.BytesIO()
    ZipPickler(buf, protocol).dump(obj)
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        z.writestr(f"{archive}/data.pkl", buf.getvalue())
        z.writestr(f"{archive}/byteorder", "little")
        for key, s in storages_of(obj, collections.OrderedDict()).items():
            z.writestr(f"{archive}/data/{key}", s.raw())
        z.writestr(f"{archive}/version", "3\n")


def _aligned_record(z, name, data, align=64):
    """A stored record whose data starts on a 64-byte boundary, padded with an 'FB' extra
    field the way torch's writer (miniz) does it."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    offset = z.fp.tell()
    pad = (-(offset + 30 + len(name.encode()) + 4)) % align
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
    z.writestr(info, data)


def write_zip_torch2(path, obj):
    """Record names, order and alignment as written by torch 2.x (archive named after the file)."""
    archive = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    buf = io.BytesIO()
    ZipPickler(buf, 2).dump(obj)
    with zipfile.ZipFile(path, "w") as z:
        _aligned_record(z, f"{archive}/data.pkl", buf.getvalue())
        _aligned_record(z, f"{archive}/.format_version", b"1")
        _aligned_record(z, f"{archive}/.storage_alignment", b"64")
        _aligned_record(z, f"{archive}/byteorder", b"little")
        for key, s in storages_of(obj, collections.OrderedDict()).items():
            _aligned_record(z, f"{archive}/data/{key}", s.raw())
        _aligned_record(z, f"{archive}/version", b"3\n")
        _aligned_record(z, f"{archive}/.data/serialization_id", b"1234567890123456789012345678901234567890")


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def write_legacy(path, obj):
    with open(path, "wb") as f:
        pickle.dump(LEGACY_MAGIC, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        sys_info = dict(protocol_version=1001, little_endian=True,
                        type_sizes=dict(short=2, int=4, long=4))
        pickle.dump(sys_info, f, protocol=2)
        p = LegacyPickler(f, 2)
        p.dump(obj)
        keys = list(p.roots.keys())
        pickle.dump(keys, f, protocol=2)
        for k in keys:
            s = p.roots[k]
            f.write(struct.pack("<q", s.numel))
            f.write(s.raw())


# ---- cases ------------------------------------------------------------------------------
def f32_values(n, seed):
    # Deterministic, varied, exactly representable after the f32 round trip (done by Storage).
    return [((i * 37 + seed * 11) % 101 - 50) / 7.0 for i in range(n)]


def bn(prefix, c, keygen, with_nbt=True):
    d = collections.OrderedDict()
    for j, name in enumerate(["weight", "bias", "running_mean", "running_var"]):
        d[f"{prefix}.{name}"] = Tensor(Storage("FloatStorage", keygen(), f32_values(c, j)), 0, [c])
    if with_nbt:
        d[f"{prefix}.num_batches_tracked"] = Tensor(Storage("LongStorage", keygen(), [1234567890123]), 0, [])
    return d


def keygen_factory():
    counter = [0]

    def next_key():
        counter[0] += 1
        return str(counter[0] - 1)

    return next_key


def small_model(prefix="", with_nbt=True):
    k = keygen_factory()
    sd = collections.OrderedDict()
    sd[prefix + "conv1.weight"] = Tensor(Storage("FloatStorage", k(), f32_values(4 * 3 * 3 * 3, 5)), 0, [4, 3, 3, 3])
    sd.update(bn(prefix + "bn1", 4, k, with_nbt))
    sd[prefix + "head.3.weight"] = Tensor(Storage("FloatStorage", k(), f32_values(2 * 4, 9)), 0, [2, 4, 1, 1])
    sd[prefix + "head.3.bias"] = Tensor(Storage("FloatStorage", k(), [0.5, -0.25]), 0, [2])
    return sd


def mixed_dtypes():
    sd = collections.OrderedDict()
    sd["half"] = Tensor(Storage("HalfStorage", "h", [0.1, -2.5, 65504.0, 1e-3, 3.140625, 0.0]), 0, [2, 3])
    sd["bf16"] = Tensor(Storage("BFloat16Storage", "b", [1.5, -2.25, 0.0078125, 256.0]), 0, [4])
    sd["double"] = Tensor(Storage("DoubleStorage", "d", [0.1, 1e300, -3.25]), 0, [3])
    sd["long"] = Tensor(Storage("LongStorage", "l", [-5, 2**40 + 3, 0, 7]), 0, [2, 2])
    sd["nbt"] = Tensor(Storage("LongStorage", "n", [0]), 0, [])
    return sd


def views(legacy=False):
    shared = Storage("FloatStorage", "shared", f32_values(24, 3))
    sd = collections.OrderedDict()
    sd["whole"] = Tensor(shared, 0, [2, 3, 4])
    sd["offset_slice"] = Tensor(shared, 6, [3, 2])          # contiguous with storage_offset
    sd["transposed"] = Tensor(shared, 0, [4, 6], [1, 4])     # non-contiguous
    sd["strided"] = Tensor(shared, 1, [3, 2], [8, 3])        # arbitrary strides + offset
    sd["broadcast"] = Tensor(shared, 5, [3, 2], [0, 1])      # stride 0 (expanded)
    sd["scalar"] = Tensor(shared, 23, [])
    sd["empty"] = Tensor(shared, 0, [0, 4])
    if legacy:
        view = StorageView(shared, "view0", 10, 8)
        sd["legacy_view"] = Tensor(view, 2, [2, 3])
    return sd


def parameters():
    sd = collections.OrderedDict()
    t = Tensor(Storage("FloatStorage", "p", f32_values(6, 1)), 0, [2, 3])
    t.__class__ = type("Param", (Tensor,), {"__reduce_ex__": _param_reduce})
    sd["param"] = t
    sd["plain"] = Tensor(Storage("FloatStorage", "q", [1.0, 2.0]), 0, [2])
    return sd


def expected(sd):
    out = []
    for key, t in sd.items():
        k = key[len("module."):] if key.startswith("module.") else key
        out.append(dict(key=k, dtype=STORAGE_TYPES[t.storage.kind][2], shape=t.size, values=t.expected_values()))
    return out


def main():
    outdir = sys.argv[1]
    cases = []

    def add(name, writer, obj, sd, **kw):
        path = f"{outdir}/{name}.pth"
        writer(path, obj, **kw)
        cases.append(dict(name=name, file=path, tensors=expected(sd)))

    sd = small_model()
    add("zip_plain", write_zip, sd, sd)
    sd = small_model(with_nbt=False)
    add("zip_no_nbt", write_zip, sd, sd)
    sd = small_model("module.")
    wrapper = collections.OrderedDict(
        state_dict=sd, epoch=3, best_nme=0.0423,
        optimizer={"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1, 2]}]})
    add("zip_wrapper_module", write_zip, wrapper, sd)
    sd = small_model("module.")
    add("zip_module_no_wrapper", write_zip, sd, sd)
    sd = mixed_dtypes()
    add("zip_dtypes", write_zip, sd, sd)
    sd = views()
    add("zip_views", write_zip, sd, sd)
    sd = small_model()
    add("zip_deflated", write_zip, sd, sd, compression=zipfile.ZIP_DEFLATED, archive="final_state")
    sd = small_model()
    add("zip_protocol4", write_zip, sd, sd, protocol=4)
    sd = parameters()
    add("zip_parameters", write_zip, sd, sd)
    sd = small_model("module.")
    add("zip_torch2_layout", write_zip_torch2, sd, sd)
    sd = small_model("module.")
    add("legacy_module", write_legacy, sd, sd)
    sd = small_model()
    add("legacy_wrapper", write_legacy, {"state_dict": sd, "epoch": 1}, sd)
    sd = mixed_dtypes()
    add("legacy_dtypes", write_legacy, sd, sd)
    sd = views(legacy=True)
    add("legacy_views", write_legacy, sd, sd)

    with open(f"{outdir}/manifest.json", "w") as f:
        json.dump(dict(cases=cases), f)


if __name__ == "__main__":
    main()
