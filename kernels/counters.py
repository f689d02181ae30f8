"""Counter slots of the counting build: one int64 per (field, tensor), tallied by the kernels themselves.

Each thread counts into a local array and adds it to the global counter array once, at
its end, with atomics. In the fast build ``COUNT_IO`` is a compile-time False: every
``if COUNT_IO:`` block, the local array included, compiles away.
"""

import numpy as np

from sandbox.vocabulary.ioreport import TENSORS, IOReport, itemsizes

FIELDS = ("hbm_reads", "hbm_writes", "sram_reads", "sram_writes")
N_SLOTS = len(FIELDS) * len(TENSORS)
#: Positions in a :func:`slots` tuple: ``slots("Q")[HBM_R]`` is Q's HBM-read counter.
HBM_R, HBM_W, SRAM_R, SRAM_W = range(len(FIELDS))


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
    """IOReport from a host copy of the counter array (element sizes from :func:`sandbox.vocabulary.ioreport.itemsizes`)."""
    counts = np.asarray(counts)
    fields = {
        f: {t: int(counts[slot(f, t)]) for t in TENSORS if counts[slot(f, t)]} for f in FIELDS
    }
    return IOReport(**fields, itemsize=itemsizes(dtype))
