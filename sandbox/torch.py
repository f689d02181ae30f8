"""PyTorch autograd for the sandbox's kernels: ``attention`` on CUDA tensors, whose ``.backward()``
runs our backward kernels.

    from sandbox.torch import attention
    o = attention(q, k, v, causal=True, mask=m)   # q: (B, H, N, d), k, v: (B, H_kv, N, d) CUDA tensors
    o.sum().backward()                             # q.grad, k.grad, v.grad from kernels/backward.py
    attention(q, k, v, schedule=tc_schedule(64, 64), fast_backward=True)  # ... from kernels/backward_tc.py

The forward runs :func:`kernels.entry.attention` (the schedule's fast build where it can run,
else its counting source without counters) and saves O and L; the backward runs
:func:`kernels.entry.attention_backward` with the same schedule, causal flag, scale and mask:
FlashAttention-2's backward with recomputation for the flash kinds, P and dS in HBM for standard.
Deterministic by default: the same inputs give bit-identical gradients (``deterministic=False``
lets the fast backward add dQ by atomics in the GPU's order where it adds them by atomics,
:func:`sandbox.attention_backward`). K and V may have fewer heads than Q
(grouped K/V heads, H_kv dividing H: query head h reads K/V head h // (H / H_kv), as SDPA's
``enable_gqa=True``); their gradients then sum each group's query heads and have K's and V's
shapes. PyTorch is imported on first use, not by ``import sandbox``.
"""

import functools

from kernels.entry import attention as _attention_kernels
from kernels.entry import attention_backward
from sandbox.vocabulary.masks import as_mask
from sandbox.vocabulary.validation import check_flags
from sandbox.vocabulary.schedule import DEFAULT_SCHEDULE


@functools.cache
def _function():
    """The autograd Function, built once, on first use (when PyTorch is imported)."""
    import torch

    class Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, schedule, causal, scale, mask, fast_backward, deterministic):
            q, k, v = (x.detach() for x in (q, k, v))  # (a tensor that requires grad exports no CUDA array)
            out, lse = _attention_kernels(q, k, v, schedule=schedule, causal=causal, scale=scale,
                                          return_lse=True, mask=mask)
            ctx.save_for_backward(q, k, v, out, lse)
            ctx.options = dict(schedule=schedule, causal=causal, scale=scale, mask=mask, fast=fast_backward,
                               deterministic=deterministic)
            return out

        @staticmethod
        def backward(ctx, dout):
            q, k, v, out, lse = (x.detach() for x in ctx.saved_tensors)  # (the saved O is part of the graph)
            dq, dk, dv = attention_backward(q, k, v, out, lse, dout.detach().contiguous(), **ctx.options)
            return dq, dk, dv, None, None, None, None, None, None

    return Attention


def attention(q, k, v, schedule=DEFAULT_SCHEDULE, causal=False, scale=None, mask=None, fast_backward=None,
              deterministic=True):
    """softmax(scale·QKᵀ)V on CUDA tensors with gradients through our backward kernels.

    Args:
        q: (B, H, Nq, d); k, v: (B, H_kv, Nk, d), H_kv dividing H (H_kv = H without grouping):
            C-contiguous CUDA tensors of one dtype (float32, float16 or bfloat16), as for
            :func:`sandbox.attention`.
        schedule, causal, scale, mask: as for :func:`sandbox.attention`; the backward uses the same.
        fast_backward: the backward's ``fast`` (:func:`sandbox.attention_backward`): None, the
            plain build (the fast backward is opt-in); True, the schedule's fast backward (flash2's
            tensor-core backward for ``Schedule(math="tf32x3")``, kernels/backward_tc.py), refused
            with the reason when ``.backward()`` runs where it cannot; False, never.
        deterministic: the backward's (:func:`sandbox.attention_backward`): False lets the fast
            backward add dQ by fp32 atomics in the GPU's order where it adds them by atomics
            (faster; dQ's rounding may differ between runs).

    Returns:
        O, (B, H, Nq, d), in the input dtype, part of the autograd graph of q, k and v.

    Raises:
        TypeError, ValueError: as :func:`sandbox.attention` and :func:`sandbox.attention_backward`
            (the latter when ``.backward()`` runs).
    """
    # one Mask object for both passes: its check over this problem and its compiled kernels are reused
    if fast_backward not in (None, True, False):
        raise TypeError(f"fast_backward: expected None, True or False, got {fast_backward!r}")
    check_flags(deterministic=deterministic)
    return _function().apply(q, k, v, schedule, causal, scale, as_mask(mask), fast_backward, bool(deterministic))
