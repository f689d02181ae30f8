"""Closed forms of the IO analysis, side by side: exact counts of our algorithms and the asymptotic bounds.

Units: elements, per (batch, head). M is SRAM size in *elements*, as in the paper; convert
bytes with :func:`sram_elements`.

- Standard attention (Algorithm 0): Θ(Nd + N²) HBM accesses. :func:`standard_hbm_exact` is
  the exact count of our three-kernel version (non-causal).
- FlashAttention (Algorithm 1, Theorem 2): Θ(N²d²M⁻¹) with the block rule Bc = ⌈M/4d⌉,
  Br = min(⌈M/4d⌉, d). :func:`flash1_hbm_exact` is the exact count of our kernel (non-causal).
- Proposition 3: no exact-attention algorithm does o(N²d²M⁻¹) HBM accesses for all M in [d, Nd].
- Saha & Ye (arXiv 2402.07443, Theorem 3.1): the optimal IO is Θ(min(N²d/√M, N²d²/M)); the
  two terms cross at M = d², and FlashAttention's bound is tight only for M ≥ d².
- Proposition 4 (block-sparse FlashAttention with nonzero-block fraction s): Θ(Nd + N²d²M⁻¹s).
- The backward (Li, Liang, Shi, Song et al., "On Fine-Grained I/O Complexity of Attention
  Backward Passes", arXiv 2410.09397, extending Saha & Ye): the optimal IO of the gradients is
  Θ(min((N²d² + Nd³)/M, (N²d + Nd²)/√M)); its terms also cross at M = d².

The Θ forms carry no constants: compare ratios simulated / closed form over a sweep, which
stay between constant bounds when the analysis holds (tests/simulator/test_theory.py).
"""

import math

import numpy as np


def sram_elements(sram_bytes, dtype):
    """M in elements of ``dtype`` for an SRAM of ``sram_bytes`` bytes."""
    return sram_bytes // np.dtype(dtype).itemsize


def paper_blocks(m_elements, head_dim):
    """The paper's block rule: (Br, Bc) = (min(⌈M/4d⌉, d), ⌈M/4d⌉)."""
    bc = math.ceil(m_elements / (4 * head_dim))
    return min(bc, head_dim), bc


# -- standard attention -------------------------------------------------------------------
def standard_hbm_theta(n, d):
    """Θ(Nd + N²): standard attention's HBM accesses, without constants."""
    return n * d + n * n


def standard_hbm_exact(n_q, n_kv, d, block_q, block_kv):
    """Exact HBM elements (reads + writes) of our Algorithm 0, non-causal, per (batch, head).

    qk reads Q once per K/V block and K once per Q block and writes S; softmax reads S twice
    and writes P and L; pv reads P and V once per Q block and writes O.
    """
    tr, tc = -(-n_q // block_q), -(-n_kv // block_kv)
    s = n_q * n_kv
    return tc * n_q * d + tr * n_kv * d + s + 2 * s + s + n_q + s + tr * n_kv * d + n_q * d


# -- FlashAttention -------------------------------------------------------------------------
def flash_hbm_theta(n, d, m_elements):
    """Θ(N²d²M⁻¹): FlashAttention's HBM accesses (Theorem 2), without constants."""
    return n * n * d * d / m_elements


def flash1_hbm_exact(n_q, n_kv, d, block_q, block_kv):
    """Exact HBM elements of our Algorithm 1 kernel, non-causal, per (batch, head).

    K and V are read once; for each of the Tc K/V blocks every Q block reads Q_i, O_i, ℓ_i, m_i
    and writes O_i, ℓ_i, m_i; O, ℓ, m are initialized in HBM first and L is written once.
    """
    tc = -(-n_kv // block_kv)
    per_pass = n_q * d * 3 + n_q * 4  # Q, O read; O written; l, m read and written
    return 2 * n_kv * d + tc * per_pass + (n_q * d + 2 * n_q) + n_q


def flash2_hbm_exact(n_q, n_kv, d, block_q, block_kv):
    """Exact HBM elements of our FlashAttention-2-order kernel, non-causal, per (batch, head).

    Q is read once, K and V once per Q block, O and L written once.
    """
    tr = -(-n_q // block_q)
    return n_q * d + 2 * tr * n_kv * d + n_q * d + n_q


# -- lower bounds ---------------------------------------------------------------------------
def io_lower_bound_trivial(n, d):
    """Every algorithm reads Q, K, V and writes O: 4Nd elements."""
    return 4 * n * d


def prop3_lower_bound(n, d, m_elements):
    """Proposition 3: Ω(N²d²M⁻¹) HBM accesses, for M in [d, Nd] (no constants).

    Raises:
        ValueError: M outside [d, Nd], where the proposition says nothing.
    """
    if not d <= m_elements <= n * d:
        raise ValueError(f"Proposition 3 holds for M in [d, Nd] = [{d}, {n * d}], got M={m_elements}")
    return n * n * d * d / m_elements


def saha_ye_bound(n, d, m_elements):
    """Saha & Ye, Theorem 3.1: Θ(min(N²d/√M, N²d²/M)) (no constants)."""
    return min(n * n * d / math.sqrt(m_elements), n * n * d * d / m_elements)


def saha_ye_crossover(d):
    """The M (elements) where N²d/√M = N²d²/M: M = d². Below it, FlashAttention is not optimal."""
    return d * d


def backward_lower_bound(n, d, m_elements):
    """Li, Liang, Shi, Song et al. (arXiv 2410.09397): the backward pass's optimal IO,
    Θ(min((N²d² + Nd³)/M, (N²d + Nd²)/√M)) (no constants). Both terms are Nd(N + d) times the
    forward's factors d/M and 1/√M, so they cross where Saha & Ye's do, at M = d²
    (:func:`saha_ye_crossover`)."""
    return min((n * n * d * d + n * d**3) / m_elements, (n * n * d + n * d * d) / math.sqrt(m_elements))


def block_sparse_hbm_theta(n, d, m_elements, s):
    """Proposition 4: Θ(Nd + N²d²M⁻¹s) for block-sparse FlashAttention with nonzero-block fraction s."""
    if not 0 <= s <= 1:
        raise ValueError(f"s: the fraction of nonzero blocks must be in [0, 1], got {s}")
    return n * d + n * n * d * d * s / m_elements


def loglog_slope(x, y):
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])
