"""Shared-memory footprints: the buffers each kind's kernels lay out in SRAM, phase by phase.

One formula for the fit check (:meth:`sandbox.vocabulary.schedule.Schedule.check_fits`), the
simulator and the kernels, which lay out their dynamic shared memory from it. A kind names its
forward footprint as its ``sram`` trait (:mod:`sandbox.vocabulary.kinds`); the backward passes'
are :data:`BACKWARD_SRAM`.

Every footprint takes ``head_dim_v``, V's head dim d_v (None: d): the V and dO tiles are d_v wide,
the Q and K tiles d wide.
"""

from collections import namedtuple

import numpy as np

from sandbox.vocabulary.dtypes import ACC

Buffer = namedtuple("Buffer", "name count itemsize")
Buffer.__doc__ = "One shared-memory buffer: tensor name, elements, bytes per element."


def standard_sram(schedule, head_dim, dtype, head_dim_v=None):
    """standard's kernels: qk (Q, K tiles), softmax (per-thread row statistics), pv (P tile, V tile)."""
    it, acc = np.dtype(dtype).itemsize, ACC.itemsize
    br, bc, d = schedule.block_q, schedule.block_kv, head_dim
    dv = head_dim if head_dim_v is None else head_dim_v
    return {
        "qk": (Buffer("Q", br * d, it), Buffer("K", bc * d, it)),
        # per-thread partial (m, l) and the combined row (m, l) in the last slot
        "softmax": (Buffer("m", schedule.threads + 1, acc), Buffer("l", schedule.threads + 1, acc)),
        "pv": (Buffer("M", br * bc, acc), Buffer("X", bc * dv, it)),  # kernels/matmul.py: M = P, X = V
    }


def flash_tiles(schedule, head_dim, dtype, head_dim_v=None):
    """Q_i, K_j, V_j in the input dtype and the Br×Bc fp32 S/P tile: the flash kinds' common buffers."""
    it, acc = np.dtype(dtype).itemsize, ACC.itemsize
    br, bc, d = schedule.block_q, schedule.block_kv, head_dim
    dv = head_dim if head_dim_v is None else head_dim_v
    return (Buffer("Q", br * d, it), Buffer("K", bc * d, it), Buffer("V", bc * dv, it), Buffer("S", br * bc, acc))


def flash2_sram(schedule, head_dim, dtype, head_dim_v=None):
    """flash2: the tiles, and the running m_i, l_i and the rescale factor alpha = exp(m_old - m_new)."""
    br, acc = schedule.block_q, ACC.itemsize
    stats = (Buffer("m", br, acc), Buffer("l", br, acc), Buffer("alpha", br, acc))
    return {"main": flash_tiles(schedule, head_dim, dtype, head_dim_v) + stats}


def splitkv_sram(schedule, head_dim, dtype, head_dim_v=None):
    """splitkv: flash2's buffers for the partial phase; the combine phase's weights w (Br × splits)."""
    return {"partial": flash2_sram(schedule, head_dim, dtype, head_dim_v)["main"],
            "combine": (Buffer("w", schedule.block_q * schedule.kv_splits, ACC.itemsize),)}


def flash1_sram(schedule, head_dim, dtype, head_dim_v=None):
    """flash1 keeps m_i, l_i in HBM; SRAM holds the two factors of the O update
    O_new = alpha·O_old + beta·(P~ V), alpha = l_i e^(m_i-m_new)/l_new, beta = e^(m~_ij-m_new)/l_new."""
    br, acc = schedule.block_q, ACC.itemsize
    stats = (Buffer("alpha", br, acc), Buffer("beta", br, acc))
    return {"main": flash_tiles(schedule, head_dim, dtype, head_dim_v) + stats}


def flash_backward_sram(schedule, head_dim, dtype, head_dim_v=None):
    """FlashAttention-2's backward (kernels/backward.py): "dkdv" and "dq" share one layout; P, then dS,
    share one Br×Bc fp32 tile."""
    it, acc = np.dtype(dtype).itemsize, ACC.itemsize
    br, bc, d = schedule.block_q, schedule.block_kv, head_dim
    dv = head_dim if head_dim_v is None else head_dim_v
    rows = (Buffer("L", br, acc), Buffer("D", br, acc))
    tiles = (Buffer("Q", br * d, it), Buffer("dO", br * dv, it), Buffer("K", bc * d, it),
             Buffer("V", bc * dv, it), Buffer("dS", br * bc, acc))
    return {"dkdv": tiles + rows, "dq": tiles + rows}


def standard_backward_sram(schedule, head_dim, dtype, head_dim_v=None):
    """Standard attention's backward: "p" (P = exp(S - L)), "ds" (dS = P ∘ (dO Vᵀ - D)), "tn"
    (Mᵀ X for dV, dK: X = dO, Br×d_v, or Q, Br×d; the larger of the two) and "nn" (dS K for dQ)."""
    it, acc = np.dtype(dtype).itemsize, ACC.itemsize
    br, bc, d = schedule.block_q, schedule.block_kv, head_dim
    dv = head_dim if head_dim_v is None else head_dim_v
    return {
        "p": (Buffer("Q", br * d, it), Buffer("K", bc * d, it), Buffer("L", br, acc)),
        "ds": (Buffer("dO", br * dv, it), Buffer("V", bc * dv, it), Buffer("D", br, acc)),
        "tn": (Buffer("M", br * bc, acc), Buffer("X", br * max(d, dv), it)),
        "nn": (Buffer("M", br * bc, acc), Buffer("X", bc * d, it)),
    }


#: The backward passes a kind may declare (its ``backward`` trait), and their footprints.
BACKWARD_SRAM = {"flash": flash_backward_sram, "standard": standard_backward_sram}


#: Alignment of each shared-memory buffer, in bytes.
SRAM_ALIGN = 16


def sram_offsets(buffers, align=SRAM_ALIGN):
    """Element offsets of each buffer in a kernel's dynamic shared memory, and its total bytes.

    Buffers start at ``align``-byte boundaries; each offset is in units of that buffer's own
    element size (a kernel indexes one typed view of the shared memory per element size).
    """
    offsets, nbytes = {}, 0
    for buf in buffers:
        nbytes = -(-nbytes // align) * align
        offsets[buf.name] = nbytes // buf.itemsize
        nbytes += buf.count * buf.itemsize
    return offsets, nbytes
