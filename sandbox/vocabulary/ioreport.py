"""IOReport: what one attention call moves, per memory level and per tensor, in elements.

Both executors return this one type: the kernels' counting build (measured) and the
simulator (modelled). Counts are elements, held as Python ints (exact at any problem size,
where int64 would wrap); bytes come from each tensor's element size.
"""

import dataclasses
from types import MappingProxyType

#: Memory levels, outermost first.
LEVELS = ("hbm", "sram")
#: Tensor names, as in the paper; "L" is the log-sum-exp. "alpha"/"beta" are the O-update
#: rescale factors the flash kernels keep in SRAM beside m and ℓ. The backward pass adds the
#: gradients dO, dQ, dK, dV, D = rowsum(dO ∘ O), and dS = P ∘ (dP - D).
#: Split-KV (kernels/splitkv.py) adds its partial outputs "Opart", "Lpart" and the combine weights "w".
#: With grouped K/V heads (H_kv < H) the backward writes each query head's dK and dV as fp32 partials,
#: "dKpart" and "dVpart" (B, H, Nk, d), and sums each group of them into dK and dV.
TENSORS = ("Q", "K", "V", "O", "S", "P", "l", "m", "L", "alpha", "beta", "dO", "dQ", "dK", "dV", "D", "dS",
           "Opart", "Lpart", "w", "dKpart", "dVpart")
#: A score_mod (sandbox/vocabulary/score_mods.py) adds "mod", its captured arrays (in 4-byte words),
#: read by every tile that evaluates it, and, in the standard backward, "dmod" = score_mod'(S)
#: (Nq×Nk, fp32), written by the kernel that forms P and read by the one that forms dS.
TENSORS += ("mod", "dmod")
#: Tensors stored in the input dtype; everything else is fp32.
INPUT_DTYPE_TENSORS = ("Q", "K", "V", "O", "dO", "dQ", "dK", "dV")


def itemsizes(dtype):
    """Bytes per element of every tensor for inputs of ``dtype`` (the rest is fp32)."""
    import numpy as np

    it = np.dtype(dtype).itemsize
    return {t: (it if t in INPUT_DTYPE_TENSORS else 4) for t in TENSORS}
_FIELDS = ("hbm_reads", "hbm_writes", "sram_reads", "sram_writes")


def _exact_int(value, name):
    """``value`` as a Python int (exact at any size); integers only, never a float or a bool."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer count, got {value!r} ({type(value).__name__})")
    return int(value)


def _frozen_counts(mapping, name):
    out = {}
    for tensor, count in dict(mapping or {}).items():
        if tensor not in TENSORS:
            raise ValueError(f"{name}: unknown tensor {tensor!r}; expected one of {TENSORS}")
        count = _exact_int(count, f"{name}[{tensor!r}]")
        if count < 0:
            raise ValueError(f"{name}[{tensor!r}] = {count} is negative")
        if count:
            out[tensor] = count
    return MappingProxyType(dict(sorted(out.items(), key=lambda kv: TENSORS.index(kv[0]))))


@dataclasses.dataclass(frozen=True, eq=False)
class IOReport:
    """Element counts per level and tensor.

    Attributes:
        hbm_reads, hbm_writes, sram_reads, sram_writes: mapping tensor name → elements.
            Tensors never touched are absent (a lookup with ``.get(name, 0)`` reads as zero).
        itemsize: mapping tensor name → bytes per element, for the byte totals.
        flops: matmul FLOPs (2 per multiply-add) the schedule executes, when known.
    """

    hbm_reads: object = None
    hbm_writes: object = None
    sram_reads: object = None
    sram_writes: object = None
    itemsize: object = None
    flops: int = None

    def __post_init__(self):
        for name in _FIELDS:
            object.__setattr__(self, name, _frozen_counts(getattr(self, name), name))
        object.__setattr__(self, "itemsize", MappingProxyType(dict(self.itemsize or {})))
        if self.flops is not None:
            object.__setattr__(self, "flops", _exact_int(self.flops, "flops"))
        missing = {t for name in _FIELDS for t in getattr(self, name)} - set(self.itemsize)
        if missing:
            raise ValueError(f"itemsize: no element size for tensors {sorted(missing)}")

    def counts(self):
        """dict field → dict tensor → elements (plain dicts, e.g. for JSON)."""
        return {name: dict(getattr(self, name)) for name in _FIELDS}

    def bytes(self, field):
        """Total bytes of one field, e.g. ``report.bytes("hbm_reads")``."""
        return sum(n * self.itemsize[t] for t, n in getattr(self, field).items())

    @property
    def hbm_bytes(self):
        """Bytes read from plus written to HBM."""
        return self.bytes("hbm_reads") + self.bytes("hbm_writes")

    @property
    def sram_bytes(self):
        """Bytes read from plus written to SRAM."""
        return self.bytes("sram_reads") + self.bytes("sram_writes")

    def total(self, field):
        """Total elements of one field."""
        return sum(getattr(self, field).values())

    def __eq__(self, other):
        """Reports are equal when every count agrees (FLOPs and element sizes are not compared)."""
        if not isinstance(other, IOReport):
            return NotImplemented
        return self.counts() == other.counts()

    __hash__ = None

    def diff(self, other):
        """Rows (field, tensor, self, other) where the two reports disagree."""
        rows = []
        for name in _FIELDS:
            a, b = getattr(self, name), getattr(other, name)
            for t in TENSORS:
                if a.get(t, 0) != b.get(t, 0):
                    rows.append((name, t, a.get(t, 0), b.get(t, 0)))
        return rows

    def table(self):
        """Rows (tensor, hbm_reads, hbm_writes, sram_reads, sram_writes) for tensors that moved."""
        used = [t for t in TENSORS if any(t in getattr(self, f) for f in _FIELDS)]
        return [(t,) + tuple(getattr(self, f).get(t, 0) for f in _FIELDS) for t in used]
