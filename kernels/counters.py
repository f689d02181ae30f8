"""Counter slots of the counting build: one int64 per (field, tensor), tallied by the kernels themselves.

Each thread counts into a local array and adds it to the global counter array once, at
its end, with atomics. In the fast build ``COUNT_IO`` is a compile-time False: every
``if COUNT_IO:`` block, the local array included, compiles away.
"""

import numpy as np

from sandbox.dtypes import ACC
from sandbox.ioreport import TENSORS, IOReport

FIELDS = ("hbm_reads", "hbm_writes", "sram_reads", "sram_writes")
N_SLOTS = len(FIELDS) * len(TENSORS)


def slot(field, tensor):
    """Index of one counter."""
    return FIELDS.index(field) * len(TENSORS) + TENSORS.index(tensor)


def slots(tensor):
    """(hbm_read, hbm_write, sram_read, sram_write) slots of ``tensor``: compile-time constants for kernels."""
    return tuple(slot(f, tensor) for f in FIELDS)


def new_counters():
    """Host array of zeroed counters."""
    return np.zeros(N_SLOTS, dtype=np.int64)


def to_report(counts, dtype):
    """IOReport from a host copy of the counter array; Q/K/V/O in ``dtype``, the rest fp32."""
    counts = np.asarray(counts)
    it = np.dtype(dtype).itemsize
    itemsize = {t: (it if t in ("Q", "K", "V", "O") else ACC.itemsize) for t in TENSORS}
    fields = {
        f: {t: int(counts[slot(f, t)]) for t in TENSORS if counts[slot(f, t)]} for f in FIELDS
    }
    return IOReport(**fields, itemsize=itemsize)
