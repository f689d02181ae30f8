"""Which build of a schedule's kernels runs a call: chosen here, once, by :func:`choose_build`
(forward) and :func:`choose_backward_build` (backward; its fast build is opt-in).

A kind has its counting kernels (kernels/registry.py's ``kernels``) and, optionally, fast builds of
the same schedule by arithmetic (``fast``: flash2's ``"fma"``, kernels/flash2_fast.py,
``"tf32x3"``, kernels/flash2_tc.py, and ``"f16"``, kernels/flash2_tc16.py, for fp16/bf16 inputs only).
A forward call runs one of:

- ``"counting"``: the counting kernels with their IO counters (``count_io``);
- ``"plain"``: the same source with the counters compiled out: with a mask (or a score_mod the fast build
  does not apply), with ``fast=False``,
  or where no fast build can run the call;
- ``"fast-<math>"``: the fast build for ``Schedule.math`` (``"fast-fma"``, ``"fast-tf32x3"``,
  ``"fast-f16"``).

The launcher (kernels/launch.py) compiles and launches the chosen :class:`Build` without deciding
again; ``kernels.entry.attention(..., return_build=True)`` hands it to the caller.
"""

import dataclasses

from kernels import registry
from kernels.limits import fast_build_refusal
from kernels.smem import device_smem_optin

COUNTING, PLAIN = "counting", "plain"


@dataclasses.dataclass(frozen=True)
class Build:
    """The build a call runs.

    Attributes:
        name: ``"counting"``, ``"plain"`` or ``"fast-<math>"`` (the module docstring).
        module: what compiles it: a module with ``phases(dtype)`` (the kind's kernels, or the fast
            build's, forward or backward; None for the counting backward, whose phases
            kernels/launch.py lists). Not part of the
            build's identity either: for one schedule the name says which module it is (and a
            kind's kernels may be an unhashable namespace, as in docs/tutorial.md).
        reason: why the kind's fast build was not taken (None when it was). Not part of the
            build's identity: two plain builds compare equal whatever their reasons.
    """

    name: str
    module: object = dataclasses.field(default=None, compare=False)
    reason: str = dataclasses.field(default=None, compare=False)

    @property
    def count_io(self):
        """Whether its kernels count their IO."""
        return self.name == COUNTING

    @property
    def fast(self):
        """Whether it is a fast build (its own module, no counters)."""
        return self.name.startswith("fast-")


def fast_build(schedule, backward=False):
    """The fast build (``backward``: of the backward) registered for the schedule's kind and
    arithmetic (kernels/registry.py), or None."""
    entry = registry.get(schedule.kind)
    return (entry.fast_backward if backward else entry.fast).get(schedule.math)


#: Why a score_mod runs the plain build: a fast build applies one only where its module says
#: ``TAKES_SCORE_MOD = True`` (all of flash2's do; a kind registered without it runs the plain build).
SCORE_MOD_REFUSAL = "a score_mod (this fast build applies none)"

#: Why grouped K/V heads run the plain build: a fast build takes them only where its module says
#: ``TAKES_GROUPED = True`` (flash2's fast forwards); the fast backwards read K and V, and write dK
#: and dV, at the query head.
GROUPED_REFUSAL = "grouped K/V heads (heads_kv < heads): this fast build reads K and V at the query head"

#: Why a V head dim of its own runs the plain build: the fast builds' V and O tiles are d wide (all
#: but flash2's tensor-core forward, kernels/flash2_tc.py, whose TAKES_HEAD_DIM_V says it takes d_v).
HEAD_DIM_V_REFUSAL = "head_dim_v != head_dim (d_v != d): this fast build's V and O tiles are head_dim wide"


def choose_build(schedule, head_dim, *, count_io=False, mask=None, fast=None, facts=None, grouped=False,
                 dtype=None, head_dim_v=None, score_mod=None):
    """The build a forward call of ``schedule`` at ``head_dim`` runs.

    Args:
        count_io: the call counts its IO: the counting build.
        mask: a :class:`sandbox.vocabulary.masks.Mask` or None; the fast builds take none.
        fast: None takes the kind's fast build whenever it can run the call (no counters, no mask,
            a thread layout it takes, shared memory the device has, and inputs it may take);
            False never; True always, or raises.
        facts: :func:`kernels.limits.host_facts` of NumPy inputs (None: CUDA arrays, unread, or no
            inputs at hand); inputs :func:`kernels.limits.fast_build_refusal` refuses (NaN, inf,
            tiny V for the tensor cores) run the plain build.
        grouped: k and v have fewer heads than q (H_kv < H), which a fast build takes where its
            module sets ``TAKES_GROUPED`` (else :data:`GROUPED_REFUSAL`).
        dtype: the inputs' dtype, for a fast build that takes only some (its ``dtype_refusal``:
            the 16-bit tensor-core build refuses fp32, which then runs the plain build); None
            (not known) refuses nothing.
        head_dim_v: V's head dim d_v (None: ``head_dim``); a fast build takes d_v ≠ d only where
            its module says so (``TAKES_HEAD_DIM_V``: the tensor-core forward), others refuse it
            (:data:`HEAD_DIM_V_REFUSAL`).
        score_mod: a :class:`sandbox.vocabulary.score_mods.ScoreMod` or None; only a fast build
            whose module sets ``TAKES_SCORE_MOD`` takes one (:data:`SCORE_MOD_REFUSAL`).

    Returns:
        a :class:`Build`.

    Raises:
        TypeError: ``fast`` is not None, True or False.
        ValueError: ``fast=True`` and the fast build cannot run this, with the reason.
    """
    return _choose(schedule, head_dim, count_io, mask, fast, facts, grouped, backward=False, dtype=dtype,
                   head_dim_v=head_dim_v, score_mod=score_mod)


#: Why ``fast=None`` leaves the backward to the plain build: the fast backward is taken only when asked for.
BACKWARD_OPT_IN = ("the fast backward runs only with fast=True: the default stays the plain backward until the "
                   "fast one has passed the whole gpu-marked suite in its place (BENCHMARKS.md, \"Fast backward, fp32\")")


def choose_backward_build(schedule, head_dim, *, count_io=False, mask=None, fast=None, facts=None, grouped=False,
                          head_dim_v=None, score_mod=None, dtype=None):
    """The build a backward call of ``schedule`` at ``head_dim`` runs: as :func:`choose_build`,
    from the kind's fast backward builds (flash2's ``"tf32x3"``: kernels/backward_tc.py), except
    that ``fast=None`` does not take them (:data:`BACKWARD_OPT_IN`): ``fast=True`` does, or raises
    why it cannot (the 16-bit fast backward, for instance, refuses fp32 ``dtype``). A counting or
    plain Build has ``module`` None (kernels/launch.py lists the counting backward's phases)."""
    if fast is None:
        return Build(COUNTING if count_io else PLAIN, None, BACKWARD_OPT_IN)
    return _choose(schedule, head_dim, count_io, mask, fast, facts, grouped, backward=True, dtype=dtype,
                   head_dim_v=head_dim_v, score_mod=score_mod)


def _choose(schedule, head_dim, count_io, mask, fast, facts, grouped, backward, dtype=None, head_dim_v=None,
            score_mod=None):
    if fast is not False and fast not in (None, True):
        raise TypeError(f"fast: expected None, True or False, got {fast!r}")
    kernels = None if backward else registry.get(schedule.kind).kernels
    module = fast_build(schedule, backward)
    what = "fast backward" if backward else "fast build"
    if fast is False:
        return Build(COUNTING if count_io else PLAIN, kernels, "fast=False")
    own_dv = head_dim_v is not None and head_dim_v != head_dim
    # a build that takes d_v != d says so (TAKES_HEAD_DIM_V); its eligible and smem_bytes then take it
    dv = {"head_dim_v": head_dim_v} if own_dv and getattr(module, "TAKES_HEAD_DIM_V", False) else {}
    why = module.eligible(schedule, head_dim, count_io, mask, **dv) if module is not None else (
        f"kind {schedule.kind!r} has no fast backward for math={schedule.math!r}" if backward
        else f"kind {schedule.kind!r} has no fast build")
    if why is None and dtype is not None and hasattr(module, "dtype_refusal"):
        why = module.dtype_refusal(dtype)
    if module is not None and score_mod is not None and not getattr(module, "TAKES_SCORE_MOD", False):
        why = SCORE_MOD_REFUSAL  # (this reason over any other: it holds whatever else does)
    if why is None and grouped and not getattr(module, "TAKES_GROUPED", False):
        why = GROUPED_REFUSAL
    if why is None and own_dv and not dv:
        why = HEAD_DIM_V_REFUSAL
    limit = device_smem_optin()
    if why is None and limit is not None and module.smem_bytes(schedule, head_dim, **dv) > limit:
        why = f"it needs {module.smem_bytes(schedule, head_dim, **dv)} bytes of shared memory, this GPU has {limit}"
    if why is not None and fast:
        raise ValueError(f"fast=True, but the {what} cannot run {schedule} at head_dim={head_dim}: {why}")
    if why is None:
        refused = fast_build_refusal(schedule, facts)
        if refused is not None:
            if fast:
                raise ValueError(f"fast=True, but {refused}; leave fast unset to run the plain build")
            why = refused
    if why is not None:
        return Build(COUNTING if count_io else PLAIN, kernels, why)
    return Build(f"fast-{schedule.math}", module)
