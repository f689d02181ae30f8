"""Probe kernels for the L2 model: plain global-memory patterns whose DRAM traffic calibrates it.

``scripts/ncu_check.py --probes`` runs them under Nsight Compute next to the attention kernels.
Each is simple enough that what it asks of global memory is known exactly; what reaches DRAM
then shows how the L2 treats dirty data (``simulator/l2.py``, "Write-back while resident"):

- :func:`write_spin`: the grid writes a buffer once, then every thread spins on arithmetic for
  ``spin`` iterations (no memory traffic). The writes reaching DRAM *during* the spin are
  written back while the lines stay cached: with a background write-back at a rate r they grow
  as r × time until the buffer is all clean.
- :func:`rewrite`: ``passes`` read-modify-write passes over a buffer, by the grid's threads
  (one block: the access pattern of flash1's O, ℓ, m). The buffer stays dirty all the time.
- :func:`write_spin` with ``spin = 0`` and a large grid: a write stream of X bytes. What does
  not reach DRAM during the kernel stayed dirty in L2: the most dirty data the L2 holds.

All take float32 buffers; the spin result is written only when it is NaN (never, for finite
inputs), so that the compiler cannot drop the loop.
"""

from sandbox.vocabulary.runtime import ensure_backend

ensure_backend()

from numba import cuda  # noqa: E402


@cuda.jit
def write_spin(buf, value, spin, sink):
    """Every element of ``buf`` = ``value`` (grid-stride), then ``spin`` dependent FMAs per thread."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, buf.size, stride):
        buf[i] = value
    x = value
    for _ in range(spin):
        x = x * 0.999999 + 1e-6
    if x != x:
        sink[0] = x


@cuda.jit
def rewrite(buf, passes):
    """``passes`` times: every element of ``buf`` += 1 (grid-stride read-modify-write)."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for _ in range(passes):
        for i in range(start, buf.size, stride):
            buf[i] += 1.0
