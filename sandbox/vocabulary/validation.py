"""Input validation shared by every entry point: messages name the argument, what it got and what it expected."""

import numpy as np

from sandbox.vocabulary import kinds
from sandbox.vocabulary.dtypes import BFLOAT16, SUPPORTED
from sandbox.vocabulary.masks import as_mask
from sandbox.vocabulary.problem import Problem, as_bool, resolve_scale
from sandbox.vocabulary.schedule import Schedule
from sandbox.vocabulary.score_mods import as_score_mod

#: Dtypes the float64 NumPy reference accepts.
REFERENCE_DTYPES = ("bfloat16", "float16", "float32", "float64")


def array_meta(x, name):
    """(shape, dtype, on_device) of a NumPy array, a Numba device array or any ``__cuda_array_interface__`` object.

    Raises:
        TypeError: if ``x`` is neither.
    """
    if isinstance(x, np.ndarray):
        return x.shape, x.dtype, False
    if type(x).__module__.split(".")[0] == "torch" and str(getattr(x, "dtype", "")) == "torch.bfloat16":
        if not x.is_cuda:
            raise TypeError(f"{name}: a CPU torch tensor; pass x.cuda() or a NumPy array")
        return tuple(x.shape), BFLOAT16, True  # no __cuda_array_interface__ for bfloat16 in torch
    if getattr(x, "__cuda_ndarray__", False):  # a Numba device array; under the CUDA simulator it has no CAI
        return tuple(x.shape), np.dtype(x.dtype), True
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        return tuple(cai["shape"]), np.dtype(cai["typestr"]), True
    raise TypeError(
        f"{name}: expected a NumPy array or a CUDA array (__cuda_array_interface__), got {type(x).__name__}"
    )


def check_qkv(q, k, v, *, dtypes=SUPPORTED, causal=False, scale=None):
    """Validate q, k, v and return the :class:`Problem` they pose.

    Args:
        q: (B, H, Nq, d). k: (B, H_kv, Nk, d), H_kv dividing H (grouped K/V heads; H_kv = H
            without grouping). v: (B, H_kv, Nk, d_v), V's own head dim d_v (the output's; d_v = d
            as usual). All of one dtype from ``dtypes``, all on the host or all on the device.
        causal, scale: as in :class:`Problem`.

    Raises:
        TypeError: non-array input, mixed host/device inputs, unsupported or mixed dtypes, a
            ``causal`` that is not a bool.
        ValueError: wrong ndim, empty dimensions, mismatched B/d/Nk, a v whose B, H_kv or Nk is not k's,
            K/V heads that do not divide
            q's heads, a ``scale`` that is not
            a finite real number.
    """
    metas = {name: array_meta(x, name) for name, x in (("q", q), ("k", k), ("v", v))}
    for name, (shape, _, _) in metas.items():
        if len(shape) != 4:
            n = "Nq" if name == "q" else "Nk"
            dim = "d_v" if name == "v" else "d"
            raise ValueError(f"{name}: expected shape (B, H, {n}, {dim}), got {shape} ({len(shape)} dims)")
        if 0 in shape:
            raise ValueError(f"{name}: every dimension must be non-empty, got shape {shape}")
    (qs, qdt, qdev), (ks, kdt, kdev), (vs, vdt, vdev) = metas.values()
    b, h, n_q, d = qs
    if ks[0] != b or ks[3] != d:
        raise ValueError(f"k: expected shape ({b}, {h}, Nk, {d}) to match q {qs} (or H_kv heads dividing {h}), got {ks}")
    if h % ks[1]:
        raise ValueError(f"k: expected shape ({b}, {h}, Nk, {d}) or ({b}, H_kv, Nk, {d}) with H_kv dividing {h}, "
                         f"got {ks} (k: {ks[1]} heads do not divide q's {h} heads; query head h reads K/V head "
                         f"h // (H / H_kv))")
    if len(vs) != 4 or vs[:3] != ks[:3]:
        raise ValueError(f"v: expected shape {ks} (that of k) or ({ks[0]}, {ks[1]}, {ks[2]}, d_v) with a head dim "
                         f"d_v of its own (k's batch, heads and length), got {vs}")
    for name, dt in (("q", qdt), ("k", kdt), ("v", vdt)):
        if dt.name not in dtypes:
            raise TypeError(f"{name}: unsupported dtype {dt.name}; expected one of {', '.join(dtypes)}")
    if not qdt == kdt == vdt:
        raise TypeError(f"q, k, v: expected one dtype, got {qdt.name}, {kdt.name}, {vdt.name}")
    if not qdev == kdev == vdev:
        raise TypeError("q, k, v: expected all on the host (NumPy) or all on the GPU, got a mix")
    causal = as_bool(causal, "causal")
    scale = resolve_scale(scale, d)
    if qdt.name not in SUPPORTED:  # reference-only dtypes (float64): a Problem needs a kernel dtype
        return None
    return Problem(batch=b, heads=h, n_q=n_q, n_kv=ks[2], head_dim=d, dtype=qdt, causal=causal, scale=scale,
                   heads_kv=ks[1], head_dim_v=vs[3])


def check_flags(**flags):
    """Each keyword argument must be True or False (NumPy's bool_ too); raise TypeError naming it otherwise."""
    for name, value in flags.items():
        as_bool(value, name)


def check_same_shape(x, name, shape, like="q"):
    """``x`` must be a NumPy array of ``shape`` (the reference's extra inputs: dout, out, lse).

    Raises:
        TypeError: ``x`` is not a NumPy array, or not of a real numeric dtype.
        ValueError: ``x`` has another shape.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array of shape {shape}, got {type(x).__name__}")
    if x.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (from {like}), got {x.shape}")
    if x.dtype.name not in REFERENCE_DTYPES:
        raise TypeError(f"{name}: unsupported dtype {x.dtype.name}; expected one of {', '.join(REFERENCE_DTYPES)}")
    return x


def check_schedule(schedule):
    """``schedule`` itself, or TypeError if it is not a :class:`~sandbox.vocabulary.schedule.Schedule`."""
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"schedule: expected a sandbox.Schedule, e.g. Schedule('flash2', block_q=64, block_kv=64), "
            f"got {type(schedule).__name__}"
        )
    return schedule


def check_mask(mask, problem, schedule):
    """The :class:`~sandbox.vocabulary.masks.Mask` for ``mask`` (None stays None), checked over ``problem``
    (:meth:`Mask.check`) for a kind that takes masks.

    Raises:
        TypeError, ValueError: not a mask; a kind without masks; the mask fails its check.
    """
    mask = as_mask(mask)
    if mask is None:
        return None
    if not kinds.get(schedule.kind).masks:
        raise ValueError(f"schedule kind {schedule.kind!r} does not take a mask "
                         f"(kinds that do: {', '.join(kinds.with_trait('masks'))})")
    return mask.check(problem)


def check_score_mod(score_mod, problem, schedule, backward=False):
    """The :class:`~sandbox.vocabulary.score_mods.ScoreMod` for ``score_mod`` (None stays None), checked
    over ``problem`` (:meth:`ScoreMod.check`; ``backward``: it must carry its ``grad``) for a kind
    that takes score_mods.

    Raises:
        TypeError, ValueError: not a function of five arguments; a kind without score_mods; it
            fails its check.
    """
    score_mod = as_score_mod(score_mod)
    if score_mod is None:
        return None
    if not kinds.get(schedule.kind).score_mods:
        raise ValueError(f"schedule kind {schedule.kind!r} does not take a score_mod "
                         f"(kinds that do: {', '.join(kinds.with_trait('score_mods'))})")
    return score_mod.check(problem, backward=backward)
