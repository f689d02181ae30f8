"""sandbox.torch: our kernels as a PyTorch autograd function, against SDPA's float64 gradients."""

import subprocess
import sys

import numpy as np
import pytest

from sandbox import Schedule, masks
from kernels.backward_tc import chunks
from tests.tolerances import gradient_tolerances, gradient_tolerances_tc

gpu = pytest.mark.gpu


def test_importing_it_does_not_import_torch():
    code = "import sys, sandbox.torch; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device")
    return torch


def _sdpa_float64(torch, q, k, v, dout, causal, scale, allowed, **gqa):
    """SDPA's gradients of sum(O ∘ dout) in float64 (the math backend: float64 runs nowhere else);
    ``gqa``: ``enable_gqa=True`` for k, v with fewer heads than q."""
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    mask = None if allowed is None else torch.as_tensor(allowed, device=q.device)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        out = torch.nn.functional.scaled_dot_product_attention(q64, k64, v64, attn_mask=mask, is_causal=causal,
                                                               scale=scale, **gqa)
    (out * dout.double()).sum().backward()
    return [x.grad.cpu().numpy() for x in (q64, k64, v64)]


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("kind, causal, mask", [
    ("flash2", False, None), ("flash2", True, None), ("flash1", True, None), ("standard", False, None),
    ("flash2", False, "window"), ("standard", True, "window"),
])
def test_gradients_match_sdpa_in_float64(dtype, kind, causal, mask):
    torch = _torch_cuda()
    from sandbox.torch import attention

    b, h, n_q, n_kv, d = 2, 3, 200, 170, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    tdtype = getattr(torch, dtype)
    q = torch.randn(b, h, n_q, d, device="cuda", generator=gen).to(tdtype).requires_grad_()
    k, v = (torch.randn(b, h, n_kv, d, device="cuda", generator=gen).to(tdtype).requires_grad_() for _ in range(2))
    dout = torch.randn(b, h, n_q, d, device="cuda", generator=gen).to(tdtype)
    m = masks.sliding_window(40) if mask else None
    allowed = None if m is None else masks.dense(m, b, h, n_q, n_kv, causal=causal)
    schedule = Schedule(kind, block_q=64, block_kv=64, thread_q=4, thread_kv=4)
    out = attention(q, k, v, schedule=schedule, causal=causal, mask=m)
    out.backward(dout)
    refs = _sdpa_float64(torch, q, k, v, dout, causal and m is None, None, allowed)
    # the tolerance of a backward handed this forward's O and L (tests/tolerances.py; fp32 host copies,
    # the dtype's rounding enters by name)
    from sandbox import attention as attention_any

    _, lse = attention_any(q.detach(), k.detach(), v.detach(), schedule=schedule, causal=causal, mask=m,
                           return_lse=True)
    host = [x.detach().float().cpu().numpy() for x in (q, k, v, dout, out)]
    atols = gradient_tolerances(*host[:4], refs, causal, 1 / np.sqrt(d), dtype, host[4], lse.cpu().numpy(),
                                allowed=allowed)
    for name, x, ref, atol in zip(("dq", "dk", "dv"), (q, k, v), refs, atols):
        got = x.grad.double().cpu().numpy()
        assert x.grad.dtype == tdtype
        np.testing.assert_allclose(got, ref, rtol=0, atol=atol, err_msg=name)


def test_fast_backward_takes_none_true_or_false():
    from sandbox.torch import attention

    with pytest.raises(TypeError, match="fast_backward: expected None, True or False"):
        attention(None, None, None, fast_backward="yes")


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask", [None, "window"])
def test_the_fast_backward_through_autograd(dtype, causal, mask):
    """fast_backward=True: flash2's tensor-core backward, against SDPA's float64 gradients (with a
    mask: SDPA's boolean attn_mask, the mask's dense form, causal included)."""
    torch = _torch_cuda()
    from kernels.flash2_tc import tc_schedule
    from sandbox import attention as attention_any
    from sandbox.torch import attention

    b, h, n, d = 2, 3, 256, 64
    gen = torch.Generator(device="cuda").manual_seed(2)
    tdtype = getattr(torch, dtype)
    q, k, v = (torch.randn(b, h, n, d, device="cuda", generator=gen).to(tdtype).requires_grad_() for _ in range(3))
    dout = torch.randn(b, h, n, d, device="cuda", generator=gen).to(tdtype)
    schedule = tc_schedule(64, 64)
    m = masks.sliding_window(40) if mask else None
    allowed = None if m is None else masks.dense(m, b, h, n, n, causal=causal)
    out = attention(q, k, v, schedule=schedule, causal=causal, mask=m, fast_backward=True)
    out.backward(dout)
    refs = _sdpa_float64(torch, q, k, v, dout, causal and m is None, None, allowed)
    _, lse = attention_any(q.detach(), k.detach(), v.detach(), schedule=schedule, causal=causal, mask=m,
                           return_lse=True)
    host = [x.detach().float().cpu().numpy() for x in (q, k, v, dout, out)]
    atols = gradient_tolerances_tc(*host[:4], refs, causal, 1 / np.sqrt(d), dtype, host[4], lse.cpu().numpy(),
                                   chunks(schedule, d, m is not None), allowed=allowed)
    for name, x, ref, atol in zip(("dq", "dk", "dv"), (q, k, v), refs, atols):
        np.testing.assert_allclose(x.grad.double().cpu().numpy(), ref, rtol=0, atol=atol, err_msg=name)


def test_deterministic_takes_true_or_false():
    from sandbox.torch import attention

    with pytest.raises(TypeError, match="deterministic"):
        attention(None, None, None, deterministic="no")


@gpu
@pytest.mark.parametrize("causal", [False, True])
def test_the_atomic_dq_backward_through_autograd(causal):
    """deterministic=False at d = 128 (64×64: the paired dkdv adds dQ by atomics, no dq kernel):
    against SDPA's float64 gradients; each atomic adds a tensor-core sum over the block's 64 keys,
    so dQ's tolerance takes chunks of Bc. The deterministic mode adds the same atomics in a fixed
    order (kernels/backward_tc.py, ORDERED_DQ) and is held to the same tolerances; causal, dK and dV
    are the same bit for bit in both modes (non-causal, the fixed order's dkdv walks each K block's
    Q blocks from its own, another order of the same sums)."""
    torch = _torch_cuda()
    from kernels.backward_tc import atomic_dq
    from kernels.flash2_tc import tc_schedule
    from sandbox import attention as attention_any
    from sandbox.torch import attention

    b, h, n, d = 1, 2, 300, 128
    schedule = tc_schedule(64, 64)
    assert atomic_dq(schedule, d, np.float32)
    gen = torch.Generator(device="cuda").manual_seed(3)
    q, k, v = (torch.randn(b, h, n, d, device="cuda", generator=gen).requires_grad_() for _ in range(3))
    dout = torch.randn(b, h, n, d, device="cuda", generator=gen)
    grads = []
    for deterministic in (True, False):
        for x in (q, k, v):
            x.grad = None
        attention(q, k, v, schedule=schedule, causal=causal, fast_backward=True,
                  deterministic=deterministic).backward(dout)
        grads.append([x.grad.clone() for x in (q, k, v)])
    if causal:
        assert torch.equal(grads[0][1], grads[1][1]) and torch.equal(grads[0][2], grads[1][2])
    refs = _sdpa_float64(torch, q, k, v, dout, causal, None, None)
    out, lse = attention_any(q.detach(), k.detach(), v.detach(), schedule=schedule, causal=causal, return_lse=True)
    host = [x.detach().float().cpu().numpy() for x in (q, k, v, dout, out)]
    atols = gradient_tolerances_tc(*host[:4], refs, causal, 1 / np.sqrt(d), "float32", host[4], lse.cpu().numpy(),
                                   (64, chunks(schedule, d)[1]))
    for mode in grads:
        for name, g, ref, atol in zip(("dq", "dk", "dv"), mode, refs, atols):
            np.testing.assert_allclose(g.double().cpu().numpy(), ref, rtol=0, atol=atol, err_msg=name)


@gpu
def test_gradients_are_bit_identical_across_runs():
    torch = _torch_cuda()
    from sandbox.torch import attention

    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(2, 4, 300, 64, device="cuda", generator=gen).requires_grad_() for _ in range(3))
    grads = []
    for _ in range(2):
        for x in (q, k, v):
            x.grad = None
        attention(q, k, v, causal=True).square().sum().backward()
        grads.append([x.grad.clone() for x in (q, k, v)])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@gpu
def test_a_training_step_lowers_the_loss():
    """A toy model, one attention layer with learned Q, K, V projections, fits a fixed target."""
    torch = _torch_cuda()
    from sandbox.torch import attention

    torch.manual_seed(0)
    b, h, n, d, width = 2, 2, 64, 16, 32
    x = torch.randn(b, n, width, device="cuda")
    target = torch.randn(b, h, n, d, device="cuda")
    proj = torch.nn.Linear(width, 3 * h * d, device="cuda")
    opt = torch.optim.SGD(proj.parameters(), lr=0.5)

    def loss_now():
        qkv = proj(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = (t.contiguous() for t in qkv)
        out = attention(q, k, v, schedule=Schedule("flash2", block_q=16, block_kv=16), causal=True)
        return torch.nn.functional.mse_loss(out, target)

    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = loss_now()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and all(np.isfinite(losses)), losses


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("heads_kv", [1, 2], ids=["mqa", "gqa"])
@pytest.mark.parametrize("kind, causal, mask", [
    ("flash2", False, None), ("flash2", True, None), ("flash1", True, None), ("standard", False, None),
    ("flash2", False, "window"),
])
def test_grouped_heads_match_sdpa_with_enable_gqa_in_float64(dtype, heads_kv, kind, causal, mask):
    """k, v with H_kv < H heads: O and the gradients (dK, dV of K's and V's shapes, each group's
    query heads summed) against SDPA's with ``enable_gqa=True`` in float64."""
    torch = _torch_cuda()
    from sandbox.torch import attention

    b, h, n_q, n_kv, d = 2, 4, 200, 170, 64
    group = h // heads_kv
    gen = torch.Generator(device="cuda").manual_seed(2)
    tdtype = getattr(torch, dtype)
    q = torch.randn(b, h, n_q, d, device="cuda", generator=gen).to(tdtype).requires_grad_()
    k, v = (torch.randn(b, heads_kv, n_kv, d, device="cuda", generator=gen).to(tdtype).requires_grad_()
            for _ in range(2))
    dout = torch.randn(b, h, n_q, d, device="cuda", generator=gen).to(tdtype)
    m = masks.sliding_window(40) if mask else None
    allowed = None if m is None else masks.dense(m, b, h, n_q, n_kv, causal=causal)
    schedule = Schedule(kind, block_q=64, block_kv=64, thread_q=4, thread_kv=4)
    out = attention(q, k, v, schedule=schedule, causal=causal, mask=m)
    out.backward(dout)
    assert out.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape
    refs = _sdpa_float64(torch, q, k, v, dout, causal and m is None, None, allowed, enable_gqa=True)
    # per query head, the tolerances of the same call on K, V expanded to H heads; dK, dV sum `group` of them
    kx, vx = (x.detach().repeat_interleave(group, dim=1) for x in (k, v))
    refs_x = _sdpa_float64(torch, q, kx, vx, dout, causal and m is None, None, allowed)
    for ref, ref_x in zip(refs[1:], refs_x[1:]):  # SDPA's enable_gqa sums the group as the expanded call does
        np.testing.assert_allclose(ref, ref_x.reshape(b, heads_kv, group, n_kv, d).sum(axis=2), rtol=1e-10, atol=1e-10)
    from sandbox import attention as attention_any

    _, lse = attention_any(q.detach(), k.detach(), v.detach(), schedule=schedule, causal=causal, mask=m,
                           return_lse=True)
    host = [x.detach().float().cpu().numpy() for x in (q, kx, vx, dout, out)]
    atols = gradient_tolerances(*host[:4], refs_x, causal, 1 / np.sqrt(d), dtype, host[4], lse.cpu().numpy(),
                                allowed=allowed)
    for name, x, ref, atol, summed in zip(("dq", "dk", "dv"), (q, k, v), refs, atols, (1, group, group)):
        assert x.grad.dtype == tdtype
        np.testing.assert_allclose(x.grad.double().cpu().numpy(), ref, rtol=0, atol=summed * atol, err_msg=name)
