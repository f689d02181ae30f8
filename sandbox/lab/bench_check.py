"""Correctness before timing: an implementation's output against float64 attention on sampled rows.

The reference is computed where the inputs are, in float64: PyTorch on the GPU when it is
installed, else CuPy, else NumPy on the host (with fewer (b, h) slices, since the host is slow).
It covers :data:`SAMPLE_ROWS` rows spread over the sequence (first and last included) of a
spread of (b, h) slices: query rows for O and dQ, the same indices as key rows for dK and dV.
dK and dV at a key need every query row, so the backward reference makes one float64 pass over
all rows of each sampled slice, in chunks of about :data:`CHUNK_ELEMENTS` scores.

Tolerances (absolute, against ``scale``: max |V| for O, max |reference gradient| for each gradient):

- float32: 1e-4 · scale. Plain fp32 attention is ~1e-6 of the scale off float64; TF32 matmuls
  (~1e-3) would fail it, which is the point.
- float16: 4 · 2⁻¹¹ · scale + 1e-3: four units of fp16 rounding of the scale (the output is
  rounded to fp16, and fp16 peers round S or P too), plus 1e-3 for the rounding of S and P
  in fp16 before they are summed.
- bfloat16: the same with bf16's unit, 4 · 2⁻⁸ · scale + 8e-3 (S and P rounded to bf16 by the
  peers that do: 8x fp16's 1e-3, the ratio of the two units).
"""

import math

import numpy as np

SAMPLE_ROWS = 128
#: (b, h) slices checked at most: forward, backward (a full float64 pass per slice); on the host.
MAX_PAIRS = {"fwd": 32, "bwd": 4}
MAX_PAIRS_HOST = {"fwd": 4, "bwd": 1}
#: Scores per chunk of the backward reference's pass over all rows (2**24 float64: 128 MiB).
CHUNK_ELEMENTS = 2**24

FP32_RTOL = 1e-4
FP16_UNITS, FP16_ATOL = 4, 1e-3
BF16_UNITS, BF16_ATOL = 4, 8e-3


def tolerance(dtype, scale):
    """Absolute error allowed for an output of ``dtype`` whose values are of size ``scale`` (see module docstring)."""
    name = getattr(dtype, "name", None) or str(dtype)
    if name == "float16":
        return FP16_UNITS * 2.0**-11 * scale + FP16_ATOL
    if name == "bfloat16":
        return BF16_UNITS * 2.0**-8 * scale + BF16_ATOL
    return FP32_RTOL * scale


def sample_rows(n, count=SAMPLE_ROWS):
    """Up to ``count`` distinct indices spread over range(n), 0 and n - 1 included."""
    return np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))


def sample_pairs(batch, heads, limit):
    """Up to ``limit`` (b, h) pairs spread over the batch·heads slices, the first and last included."""
    flat = np.unique(np.linspace(0, batch * heads - 1, min(limit, batch * heads)).round().astype(np.int64))
    return [(int(i) // heads, int(i) % heads) for i in flat]


class Backend:
    """The few float64 operations the reference needs, in PyTorch, CuPy or NumPy."""

    def __init__(self, lib):
        self.lib = lib
        if lib == "torch":
            import torch

            self.xp = torch
            self.to64 = lambda x: torch.as_tensor(x, device="cuda").to(torch.float64)
            self.index = lambda ix: torch.as_tensor(np.asarray(ix), device="cuda")
            self.arange = lambda a, b: torch.arange(a, b, device="cuda")
            self.rowmax = lambda x: x.amax(dim=-1, keepdim=True)
            self.rowsum = lambda x: x.sum(dim=-1, keepdim=True)
        else:
            if lib == "cupy":
                import cupy as xp

                self.to64 = lambda x: xp.asarray(x).astype(xp.float64)
            else:
                xp = np
                self.to64 = lambda x: np.asarray(x.copy_to_host() if hasattr(x, "copy_to_host") else x, np.float64)
            self.xp = xp
            self.index = xp.asarray
            self.arange = xp.arange
            self.rowmax = lambda x: x.max(axis=-1, keepdims=True)
            self.rowsum = lambda x: x.sum(axis=-1, keepdims=True)

    def absmax(self, x):
        return float(self.xp.abs(x).max())

    def softmax_rows(self, q_rows, k, rows, causal, scale):
        """P for query rows ``rows`` (indices; ``q_rows`` their Q) against every key: (len(rows), Nk)."""
        s = scale * (q_rows @ k.T)
        if causal:
            s = self.xp.where(self.arange(0, k.shape[0])[None, :] <= rows[:, None], s, -math.inf)
        p = self.xp.exp(s - self.rowmax(s))
        return p / self.rowsum(p)


def reference_backend(lib):
    """The backend for inputs made in ``lib``: "torch" → PyTorch, "cupy" → CuPy, otherwise NumPy."""
    return Backend(lib if lib in ("torch", "cupy") else "numpy")


class Reference:
    """Float64 values of one problem on one input set, on sampled rows, and the check against them.

    Args:
        inputs: an :class:`sandbox.lab.peers.InputSet` (its arrays in ``inputs.lib``).
        problem: the :class:`Problem` (Nq = Nk; K and V may have H_kv < H heads: query head h
            reads K/V head h // (H / H_kv), and dK, dV of a K/V head sum its group's query heads).
        direction: "fwd" (O) or "bwd" (dQ, dK, dV for upstream gradient dO = ``inputs``' dout).
    """

    def __init__(self, inputs, problem, direction):
        self.bk = bk = reference_backend(inputs.lib)
        self.direction = direction
        limits = MAX_PAIRS if bk.lib != "numpy" else MAX_PAIRS_HOST
        self.pairs = sample_pairs(problem.batch, problem.heads, limits[direction])
        self.rows = sample_rows(problem.n_q)
        q, k, v, dout = inputs.arrays
        group = problem.group
        # K/V heads of the sampled query heads: dK and dV are checked there
        self.kv_pairs = list(dict.fromkeys((b, h // group) for b, h in self.pairs))
        self.pairs_of = {"O": self.pairs, "dQ": self.pairs, "dK": self.kv_pairs, "dV": self.kv_pairs}
        self.expected = {}  # tensor name -> list over its pairs of float64 arrays (rows, d)
        self.scale = {}  # tensor name -> max |value| over the sampled slices
        for b, h in self.pairs:
            if direction == "fwd":
                self._add("O", self._forward(q[b, h], k[b, h // group], v[b, h // group], problem), v[b, h // group])
            else:
                hk = h // group
                self._add("dQ", self._backward(q[b, h], k[b, hk], v[b, hk], dout[b, h], problem, dkdv=False)[0], None)
        if direction == "bwd":
            for b, hk in self.kv_pairs:  # dK, dV: the sum over the group's query heads
                dk = dv = 0.0
                for h in range(hk * group, (hk + 1) * group):
                    _, dk_h, dv_h = self._backward(q[b, h], k[b, hk], v[b, hk], dout[b, h], problem, dq=False)
                    dk, dv = dk + dk_h, dv + dv_h
                self._add("dK", dk, None)
                self._add("dV", dv, None)

    def _add(self, name, value, scale_from):
        self.expected.setdefault(name, []).append(value)
        src = value if scale_from is None else self.bk.to64(scale_from)
        self.scale[name] = max(self.scale.get(name, 0.0), self.bk.absmax(src))

    def _forward(self, q, k, v, problem):
        bk = self.bk
        q, k, v = bk.to64(q), bk.to64(k), bk.to64(v)
        rows = bk.index(self.rows)
        return bk.softmax_rows(q[rows], k, rows, problem.causal, problem.scale) @ v

    def _backward(self, q, k, v, dout, problem, dq=True, dkdv=True):
        """(dQ, dK, dV) of one (query head, K/V head) slice on the sampled rows; dQ None unless ``dq``,
        dK and dV None unless ``dkdv``."""
        bk, scale, causal = self.bk, problem.scale, problem.causal
        q, k, v, dout = bk.to64(q), bk.to64(k), bk.to64(v), bk.to64(dout)
        rows = bk.index(self.rows)
        if dq:  # dQ on the sampled query rows: dS = P ∘ (dO Vᵀ - D), D = rowsum(dO ∘ O), dQ = scale · dS K
            p = bk.softmax_rows(q[rows], k, rows, causal, scale)
            d_r = bk.rowsum(dout[rows] * (p @ v))
            dq = scale * ((p * (dout[rows] @ v.T - d_r)) @ k)
        else:
            dq = None
        if not dkdv:
            return dq, None, None
        # dK, dV on the same indices as key rows: every query row contributes, chunk by chunk
        dk = dv = 0.0
        n = q.shape[0]
        chunk = max(1, CHUNK_ELEMENTS // n)
        for a in range(0, n, chunk):
            z = min(a + chunk, n)
            p = bk.softmax_rows(q[a:z], k, bk.arange(a, z), causal, scale)
            d_c = bk.rowsum(dout[a:z] * (p @ v))
            p_c = p[:, rows]
            ds_c = p_c * (dout[a:z] @ v[rows].T - d_c)
            dk = dk + scale * (ds_c.T @ q[a:z])
            dv = dv + p_c.T @ dout[a:z]
        return dq, dk, dv

    def check(self, result, tol):
        """Compare an implementation's ``result`` (O, or (dQ, dK, dV)) with the reference.

        Args:
            tol: function scale -> absolute tolerance.

        Returns:
            (ok, max_err, atol, tensor): ok if every tensor is within its tolerance; ``max_err``
            and ``atol`` are those of the tensor furthest off relative to its tolerance (NaN
            counts as off).
        """
        results = {"O": result} if self.direction == "fwd" else dict(zip(("dQ", "dK", "dV"), result))
        worst = None
        for name, got in results.items():
            atol = tol(self.scale[name])
            err = 0.0
            for (b, h), want in zip(self.pairs_of[name], self.expected[name]):
                e = self.bk.absmax(self.bk.to64(got[b, h])[self.bk.index(self.rows)] - want)
                err = math.nan if math.isnan(e) or math.isnan(err) else max(err, e)
            bad = math.inf if math.isnan(err) else err / atol
            if worst is None or bad > worst[0]:
                worst = (bad, err, atol, name)
        bad, err, atol, name = worst
        return bad <= 1.0, err, atol, name
