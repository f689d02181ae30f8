"""What ``python -m sandbox bench`` runs: our kernels and their peers, as small adapters in one registry.

Every implementation is an object with

- ``name``, ``direction`` ("fwd" or "bwd"), ``ours`` (our kernels, or a peer), and ``memory``: how
  its peak extra device memory is measured ("torch", "cupy" or "numba", see :func:`peak_extra_bytes`);
- ``available(problem)`` → ``(True, "")`` or ``(False, reason)``;
- ``prepare(inputs, problem)`` → a zero-argument callable that runs it once on that
  :class:`InputSet` and returns its results: O for "fwd", (dQ, dK, dV) for "bwd" (whose
  ``prepare`` runs the forward once, outside any timing);
- ``context()``: a context manager entered around all of its calls (PyTorch's backend choice,
  ``no_grad``), so that entering it is not part of any timed call;
- ``tolerance(problem, scale)``: the absolute error allowed against the float64 reference
  (:func:`sandbox.lab.bench_check.tolerance`).

Everything runs on the CUDA default (legacy) stream: PyTorch's, CuPy's and Numba's default
streams are all that null stream, so one pair of CUDA events times any of them. Inputs are made
once, in PyTorch when it is installed (else CuPy, else Numba), and every implementation sees
zero-copy views of the same memory.
"""

import contextlib
import gc
import importlib.util
import math
import sys
import warnings

import numpy as np
from numba import cuda

from kernels import registry
from kernels.builds import GROUPED_REFUSAL, choose_backward_build, choose_build
from kernels.launch import counting_allocations, dq_build, from_device, run, run_backward, to_device
from kernels.smem import check_device_limit
from sandbox.lab.autotune import tuned_schedule
from sandbox.lab.bench_check import tolerance as default_tolerance
from sandbox.vocabulary import kinds
from sandbox.vocabulary.runtime import using_simulator
from sandbox.vocabulary.schedule import Schedule

#: Our kernels' default schedule, per kind: 64×64 blocks, 4×4 register tiles (256 threads).
DEFAULT_BLOCK, DEFAULT_TILE = 64, 4
#: K/V block of the blockwise PyTorch in "Attention vs Flash Attention" (its default block_size).
BLOCKWISE_BLOCK = 128
#: PyTorch SDPA backends we time, by our name.
SDPA_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION",
                 "sdpa-efficient": "EFFICIENT_ATTENTION", "sdpa-math": "MATH"}
#: SDPA backends that take fp16/bf16 inputs only.
SDPA_16BIT_ONLY = ("sdpa-flash", "sdpa-cudnn")
#: Peers' rows, in the order they are produced (ours follow: :func:`impl_names`).
PEER_NAMES = (*SDPA_BACKENDS, "cupy-naive", "torch-blockwise")
#: The suffix of a row that runs a kind's counting-build source with its counters compiled out,
#: for kinds that have a fast build (whose own row is named after the kind).
PLAIN = "-plain"


def ours():
    """Our forward rows by name, from the kernels' registry (kernels/registry.py): ``{name: (kind, fast)}``.

    Every kind's row runs its default build (``fast=None``: the fast build where one can run; for
    flash2 on the autotuned schedule, sandbox/lab/autotune.py); a kind with a fast build also has a
    ``<kind>-plain`` row, its counting build's source without counters (``fast=False``).
    """
    out = {}
    for kind in registry.names():
        out[kind] = (kind, None)
        if registry.get(kind).fast:
            out[kind + PLAIN] = (kind, False)
    return out


def backward_names():
    """Names with a backward row: the peers' SDPA backends, every kind with a backward pass, and a
    ``<kind>-plain`` row for a kind with a fast backward (its counting backward without counters)."""
    ours_bwd = []
    for k in registry.names():
        if kinds.get(k).backward is not None:
            ours_bwd.append(k)
            if registry.get(k).fast_backward:
                ours_bwd.append(k + PLAIN)
    return (*SDPA_BACKENDS, *ours_bwd)


def impl_names():
    """Every implementation name, in the order rows are produced (peers first, then ours)."""
    return (*PEER_NAMES, *ours())


def rows_of_kind(kind):
    """The bench's rows that run ``kind``'s kernels: forward names, then "<name> (bwd)" for backward ones."""
    names = tuple(name for name, (k, _) in ours().items() if k == kind)
    return names + tuple(f"{name} (bwd)" for name in names if name in backward_names())


def installed(module):
    """True if ``module`` can be imported (without importing it; a dotted name's parents are imported)."""
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def torch_cuda():
    """(True, "") if PyTorch with CUDA is usable here, else (False, why not)."""
    if not installed("torch"):
        return False, "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return False, "torch has no CUDA device"
    return True, ""


def array_library():
    """The library the bench's inputs are made in: "torch", else "cupy", else "numba"."""
    if torch_cuda()[0]:
        return "torch"
    return "cupy" if installed("cupy") else "numba"


# -- inputs ---------------------------------------------------------------------------------

def convert(x, lib):
    """``x`` (a torch, CuPy or Numba device array) as a ``lib`` array over the same memory."""
    if lib == "torch":
        import torch

        return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, device="cuda")
    if lib == "cupy":
        import cupy

        return cupy.asarray(x)
    return cuda.as_cuda_array(x, sync=False)  # sync=False: everything is on the one default stream


class InputSet:
    """One set of inputs on the GPU: q (B, H, N, d), k, v (B, H_kv, N, d) and, for a backward, dO
    (B, H, N, d); views in any library."""

    def __init__(self, lib, q, k, v, dout=None):
        self.lib, self.arrays, self._views = lib, (q, k, v, dout), {}

    def view(self, lib):
        """(q, k, v, dout) as ``lib`` arrays over the same memory (dout None without a backward)."""
        if lib == self.lib:
            return self.arrays
        if lib not in self._views:
            self._views[lib] = tuple(None if x is None else convert(x, lib) for x in self.arrays)
        return self._views[lib]


def make_input_sets(problem, n_sets, backward, seed=0, lib=None):
    """``n_sets`` independent standard-normal input sets for ``problem``, made on the GPU in ``lib``
    (k and v with ``problem.heads_kv`` heads)."""
    lib = lib or array_library()
    q_shape = (problem.batch, problem.heads, problem.n_q, problem.head_dim)
    kv_shape = (problem.batch, problem.heads_kv, problem.n_kv, problem.head_dim)
    shapes = (q_shape, kv_shape, kv_shape, q_shape)[:4 if backward else 3]
    sets = []
    for i in range(n_sets):
        if lib == "torch":
            import torch

            gen = torch.Generator(device="cuda").manual_seed(seed * 1000 + i)
            dt = getattr(torch, problem.dtype.name)
            arrays = [torch.randn(shape, generator=gen, device="cuda", dtype=dt) for shape in shapes]
        elif lib == "cupy":
            import cupy

            rng = cupy.random.default_rng(seed * 1000 + i)
            arrays = [rng.standard_normal(shape, dtype=cupy.float32).astype(problem.dtype, copy=False)
                      for shape in shapes]
        else:
            rng = np.random.default_rng(seed * 1000 + i)
            arrays = [cuda.to_device(rng.standard_normal(shape).astype(problem.dtype)) for shape in shapes]
        sets.append(InputSet(lib, *arrays))
    return sets


# -- device memory --------------------------------------------------------------------------

def free_device_memory():
    """Hand cached device memory back: PyTorch's caching allocator, CuPy's pool, Numba's deferred frees."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        cupy.get_default_memory_pool().free_all_blocks()
    if not using_simulator():
        cuda.current_context().deallocations.clear()


def peak_extra_bytes(memory, call):
    """Device memory one ``call()`` needs beyond what is allocated before it (its inputs), output included.

    ``memory``: "torch" (the caching allocator's peak over its baseline), "cupy" (growth of
    CuPy's pool, emptied first) or "numba" (bytes our launcher allocates; nothing is freed
    during one of our calls, so the sum is the peak).
    """
    if memory == "torch":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        result = call()
        torch.cuda.synchronize()
        del result
        return torch.cuda.max_memory_allocated() - base
    if memory == "cupy":
        import cupy

        pool = cupy.get_default_memory_pool()
        cupy.cuda.Device().synchronize()
        pool.free_all_blocks()
        base = pool.total_bytes()
        result = call()
        cupy.cuda.Device().synchronize()
        del result
        return pool.total_bytes() - base
    with counting_allocations() as total:
        result = call()
    del result
    return total[0]


# -- the implementations --------------------------------------------------------------------

#: Why a peer without grouped K/V heads has no row for them.
NO_GROUPED_HEADS = "takes K, V with as many heads as Q (no grouped K/V heads)"


class Impl:
    """Base adapter: see the module docstring."""

    ours = False
    memory = "torch"

    def __init__(self, name, direction="fwd"):
        self.name, self.direction = name, direction

    def available(self, problem):
        return True, ""

    def context(self):
        return contextlib.nullcontext()

    def tolerance(self, problem, scale):
        return default_tolerance(problem.dtype, scale)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.direction}>"


class Sdpa(Impl):
    """``torch.nn.functional.scaled_dot_product_attention`` with one backend forced by ``sdpa_kernel``.

    The backward is autograd through it; only ``torch.autograd.grad`` is timed. With grouped K/V
    heads (H_kv < H) k and v have H_kv heads and the call passes ``enable_gqa=True`` (PyTorch >= 2.5);
    a backend that refuses them says so in its "No available kernel" warnings, and the row is n/a.
    """

    def available(self, problem):
        ok, why = torch_cuda()
        if not ok:
            return ok, why
        if not installed("torch.nn.attention"):
            return False, "this torch has no torch.nn.attention.sdpa_kernel (PyTorch >= 2.3)"
        if self.name in SDPA_16BIT_ONLY and problem.dtype.name == "float32":
            return False, f"{self.name} takes fp16/bf16 only"
        if problem.group > 1:
            import torch.nn.functional as F

            if "enable_gqa" not in (F.scaled_dot_product_attention.__doc__ or ""):
                return False, "this torch's SDPA has no enable_gqa for grouped K/V heads (PyTorch >= 2.5)"
        return True, ""

    def context(self):
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack = contextlib.ExitStack()
        stack.enter_context(sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[self.name])))
        if self.direction == "fwd":
            stack.enter_context(torch.no_grad())
        return stack

    def prepare(self, inputs, problem):
        import torch
        import torch.nn.functional as F

        q, k, v, dout = inputs.view("torch")
        kw = sdpa_arguments(problem)
        if self.direction == "fwd":
            return lambda: F.scaled_dot_product_attention(q, k, v, **kw)
        leaves = tuple(x.detach().requires_grad_() for x in (q, k, v))
        out = F.scaled_dot_product_attention(*leaves, **kw)
        return lambda: torch.autograd.grad(out, leaves, dout, retain_graph=True)


def sdpa_arguments(problem):
    """The keyword arguments of SDPA's call for ``problem``: the mask, the scale, and ``enable_gqa``
    where K and V have fewer heads than Q."""
    kw = dict(is_causal=problem.causal, scale=problem.scale)
    if problem.group > 1:
        kw["enable_gqa"] = True
    return kw


class TorchBlockwise(Impl):
    """The blog post's blockwise PyTorch attention (:func:`blockwise_attention`), K/V blocks of ``BLOCKWISE_BLOCK``."""

    def available(self, problem):
        if problem.group > 1:
            return False, NO_GROUPED_HEADS
        return torch_cuda()

    def context(self):
        import torch

        return torch.no_grad()

    def prepare(self, inputs, problem):
        import torch

        q, k, v, _ = inputs.view("torch")
        return lambda: blockwise_attention(q, k, v, BLOCKWISE_BLOCK, problem.causal, problem.scale, xp=torch)


class CupyNaive(Impl):
    """Standard attention in CuPy (:func:`naive_attention`): S and P of Nq×Nk in device memory."""

    memory = "cupy"

    def available(self, problem):
        if problem.group > 1:
            return False, NO_GROUPED_HEADS
        if problem.dtype.name == "bfloat16":
            return False, "CuPy has no bfloat16"
        return (True, "") if installed("cupy") else (False, "cupy is not installed")

    def prepare(self, inputs, problem):
        import cupy

        q, k, v, _ = inputs.view("cupy")
        return lambda: naive_attention(q, k, v, problem.causal, problem.scale, xp=cupy)


#: The name suffix of a backward row run with ``deterministic=False`` (dQ added by atomics where the
#: fast backward can: kernels/backward_tc.py, ``atomic_dq``).
ATOMIC_DQ = "-atomic-dq"


class Ours(Impl):
    """Our Numba kernels through ``kernels.launch``: ``run`` (forward) or ``run_backward``.

    ``schedule`` None: the autotuned one for the problem's (head_dim, dtype) (sandbox/lab/autotune.py);
    with grouped K/V heads, whose calls run the plain build, the default one (nothing to tune).
    ``fast``: as for :func:`kernels.builds.choose_build` (None: the fast build where it can run).
    ``deterministic``: the backward's (``run_backward``); a row with False is named ``<name>-atomic-dq``.
    The backward's ``prepare`` runs the same kind's forward once for O and L.
    """

    ours = True
    memory = "numba"

    def __init__(self, name, direction, schedule, fast=None, deterministic=True):
        super().__init__(name if deterministic else name + ATOMIC_DQ, direction)
        self.key, self.schedule, self.fast, self.deterministic = name, schedule, fast, deterministic

    def schedule_for(self, problem):
        if self.schedule is not None:
            return self.schedule
        if problem.group > 1 and self.direction == "bwd":  # grouped K/V heads: the plain backward, untuned
            return default_schedules()[self.key]
        if self.direction == "bwd":  # the fast backward's tuned blocks; where none can run, the default
            try:
                return tuned_schedule(problem.head_dim, problem.dtype.name, problem.causal, backward=True,
                                      deterministic=self.deterministic)
            except RuntimeError:
                return default_schedules()[self.key]
        return tuned_schedule(problem.head_dim, problem.dtype.name, problem.causal)

    def fast_for(self, problem):
        """``fast`` as this row passes it: a backward row whose ``fast`` is None asks for the fast
        backward (opt-in, kernels/builds.py) where its schedule has one, and takes the plain one elsewhere."""
        if self.direction != "bwd" or self.fast is not None:
            return self.fast
        try:
            choose_backward_build(self.schedule_for(problem), problem.head_dim, fast=True, grouped=problem.group > 1,
                                  dtype=problem.dtype)
        except ValueError:
            return None
        return True

    def chosen(self, problem):
        """The :class:`kernels.builds.Build` this row runs."""
        chooser = choose_backward_build if self.direction == "bwd" else choose_build
        return chooser(self.schedule_for(problem), problem.head_dim, fast=self.fast_for(problem),
                       grouped=problem.group > 1, dtype=problem.dtype)

    def describe(self, problem):
        """The schedule and which build runs it (and, with grouped K/V heads, why not a fast one)."""
        chosen = self.chosen(problem)
        # (grouped, a fast backward is not even asked for: fast_for)
        refused = chosen.reason == GROUPED_REFUSAL or (self.direction == "bwd" and not chosen.fast)
        grouped = f"; {GROUPED_REFUSAL}" if problem.group > 1 and refused else ""
        atomic = ""
        if self.direction == "bwd":
            extra = dq_build(self.schedule_for(problem), problem, chosen, None, self.deterministic)
            if not self.deterministic:
                atomic = "; dQ by atomics" if extra else "; deterministic: no atomic dQ for this build"
            elif extra:
                atomic = "; dQ by atomics in a fixed order"
        return f"{self.schedule_for(problem).describe()} ({chosen.name} build{grouped}{atomic})"

    def available(self, problem):
        backward = self.direction == "bwd"
        try:
            s = self.schedule_for(problem)
            if not self.chosen(problem).fast:  # (a fast build's own tiles were checked when it was chosen)
                s.check_fits(problem.head_dim, problem.dtype, backward=backward)
                check_device_limit(s.sram_footprint(problem.head_dim, problem.dtype, backward=backward))
        except ValueError as e:
            return False, str(e)
        return True, ""

    def prepare(self, inputs, problem):
        wrap = lambda x: x  # noqa: E731
        if problem.dtype.name == "bfloat16":  # PyTorch's tensors, as their uint16 bits (kernels/launch.py)
            tensors = inputs.view("torch")
            q, k, v, dout = (None if x is None else to_device([x], "x")[0] for x in tensors)
            wrap = lambda x: from_device([x], tensors[0], [problem.dtype])[0]  # noqa: E731  (bits -> bf16 tensor)
        else:
            q, k, v, dout = inputs.view("numba")
        s, fast = self.schedule_for(problem), self.fast
        if self.direction == "fwd":
            return lambda: wrap(run(s, problem, q, k, v, fast=fast)[0])
        out, lse = run(s, problem, q, k, v, fast=fast)[:2]
        bwd_fast = self.fast_for(problem)
        return lambda: tuple(wrap(x) for x in run_backward(s, problem, q, k, v, out, lse, dout, fast=bwd_fast,
                                                           deterministic=self.deterministic)[:3])


def default_schedules(block_q=None, block_kv=None, thread_q=None, thread_kv=None, tune=False, math=None):
    """Our rows' schedules (by name, see :func:`ours`): 64×64 blocks and 4×4 register tiles unless
    overridden (all alike). ``tune``: "flash2" gets None, i.e. the autotuned schedule, unless
    something is overridden. ``math`` (Schedule.math) applies to the flash2 rows only.

    Raises:
        ValueError, TypeError: an impossible schedule (see :class:`Schedule`).
    """
    pick = lambda value, default: default if value is None else value  # noqa: E731
    b, t = DEFAULT_BLOCK, DEFAULT_TILE

    def schedule(kind):
        if math and math != "fma" and kind == "flash2":  # its thread tile is the math's own unless given
            return Schedule(kind, block_q=pick(block_q, b), block_kv=pick(block_kv, b), thread_q=thread_q,
                            thread_kv=thread_kv, math=math)
        return Schedule(kind, block_q=pick(block_q, b), block_kv=pick(block_kv, b), thread_q=pick(thread_q, t),
                        thread_kv=pick(thread_kv, t), **({"math": math} if math and kind == "flash2" else {}))

    out = {name: schedule(kind) for name, (kind, _) in ours().items()}
    if tune and (block_q, block_kv, thread_q, thread_kv, math) == (None,) * 5:
        out["flash2"] = None
    return out


def implementations(names=None, backward=False, schedules=None, atomic_dq=False):
    """The registry: adapters for ``names`` (default: all), forward ones first, then backward ones;
    with ``atomic_dq``, after each of our kinds' backward rows its ``-atomic-dq`` twin
    (``deterministic=False``).

    Raises:
        ValueError: an unknown name.
    """
    all_names, our_rows = impl_names(), ours()
    names = all_names if names is None else tuple(names)
    for name in names:
        if name not in all_names:
            raise ValueError(f"unknown implementation {name!r}; expected one of {', '.join(all_names)}")
    schedules = schedules or default_schedules()

    def make(name, direction):
        if name in SDPA_BACKENDS:
            return Sdpa(name, direction)
        if name == "torch-blockwise":
            return TorchBlockwise(name)
        if name == "cupy-naive":
            return CupyNaive(name)
        return Ours(name, direction, schedules[name], fast=our_rows[name][1])

    out = [make(n, "fwd") for n in all_names if n in names]
    if backward:  # (a schedule of None: the tuned one for the backward, sandbox/lab/autotune.py)
        for n in backward_names():
            if n in names:
                out.append(Ours(n, "bwd", schedules[n], fast=our_rows[n][1]) if n in our_rows else make(n, "bwd"))
                if atomic_dq and n in our_rows and our_rows[n][1] is None:
                    out.append(Ours(n, "bwd", schedules[n], fast=None, deterministic=False))
    return out


# -- the peers' algorithms ------------------------------------------------------------------

def blockwise_attention(q, k, v, block_size=BLOCKWISE_BLOCK, causal=False, scale=None, xp=None):
    """The blog post's ``flash_attention(Q, K, V, block_size)``, for (B, H, N, d): K/V tiles, online softmax.

    Plain array operations that PyTorch and NumPy (≥ 2.0) share, so the bench runs it on torch
    tensors and the tests on NumPy arrays. As in the blog post, all of Q meets one K/V block at a
    time and O is renormalized after every block; m, ℓ and O are kept in fp32, and P̃ is cast to
    the input dtype for the PV product (as FlashAttention does). The causal mask is applied by
    masking (no block is skipped); block 0 comes first, so every row's m is finite from then on.

    Args:
        q: (B, H, Nq, d); k, v: (B, H, Nk, d), torch tensors or NumPy arrays (``xp`` their module).
        block_size: rows of a K/V block (Bc).

    Returns:
        O, (B, H, Nq, d), in q's dtype.
    """
    if xp is None:
        import torch as xp
    n_q, n_kv = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    f32, dev = xp.float32, q.device
    stats_shape = tuple(q.shape[:-1]) + (1,)
    out = xp.zeros(tuple(q.shape), dtype=f32, device=dev)
    row_max = xp.full(stats_shape, -math.inf, dtype=f32, device=dev)  # m_i
    row_sum = xp.zeros(stats_shape, dtype=f32, device=dev)  # ℓ_i
    rows = xp.arange(n_q, device=dev)[:, None]
    for j in range(0, n_kv, block_size):
        j_end = min(j + block_size, n_kv)
        k_j, v_j = k[..., j:j_end, :], v[..., j:j_end, :]
        # -- S_ij = scale · Q K_jᵀ, in fp32 --
        scores = xp.asarray(xp.matmul(q, k_j.mT), dtype=f32) * scale
        if causal:  # query i sees keys j <= i
            scores = xp.where(xp.arange(j, j_end, device=dev)[None, :] > rows, -math.inf, scores)
        # -- update m_i and ℓ_i --
        block_max = xp.amax(scores, axis=-1, keepdims=True)
        new_max = xp.maximum(row_max, block_max)
        exp_old = xp.exp(row_max - new_max) * row_sum
        exp_new = xp.exp(scores - new_max)  # P̃_ij
        new_sum = exp_old + xp.sum(exp_new, axis=-1, keepdims=True)
        # -- O = O · ℓ_i e^(m_i - m_new) / ℓ_new + P̃_ij V_j / ℓ_new --
        pv = xp.asarray(xp.matmul(xp.asarray(exp_new, dtype=v.dtype), v_j), dtype=f32)
        out = out * (exp_old / new_sum) + pv / new_sum
        row_max, row_sum = new_max, new_sum
    return xp.asarray(out, dtype=q.dtype)


def naive_attention(q, k, v, causal=False, scale=None, xp=None):
    """Standard attention as a CuPy user writes it: S = scale·QKᵀ, softmax with the row max subtracted, O = PV.

    S is one (B, H, Nq, Nk) array in the input dtype, overwritten in place by P. Works on CuPy
    (the bench) or NumPy (the tests) arrays, ``xp`` their module.
    """
    if xp is None:
        import cupy as xp
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = xp.matmul(q, xp.swapaxes(k, -1, -2))
    s *= scale
    if causal:
        n_q, n_kv = s.shape[-2:]
        masked = xp.arange(n_kv)[None, :] > xp.arange(n_q)[:, None]
        xp.copyto(s, -math.inf, where=masked)
    s -= s.max(axis=-1, keepdims=True)
    xp.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return xp.matmul(s, v)


def sdpa_unavailable_reason(error, caught_warnings=()):
    """The reason PyTorch gave for "No available kernel", shortened, or None if ``error`` is not that."""
    if not isinstance(error, RuntimeError) or "No available kernel" not in str(error):
        return None
    why = [str(w.message).splitlines()[0] for w in caught_warnings if "not used because" in str(w.message)]
    return ("; ".join(why) or str(error).splitlines()[0])[:160]


@contextlib.contextmanager
def recording_warnings():
    """Collect warnings (PyTorch explains a refused backend in warnings) instead of printing them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
