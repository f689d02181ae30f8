"""Score modifications, written once for the kernels, the simulator and the reference.

A score_mod is a function ``score_mod(score, b, h, q_idx, kv_idx) -> float`` (PyTorch
FlexAttention's ``score_mod``): it receives the scaled score S_ij = scale·q_i·k_j (fp32 in the
kernels, float64 in the reference) of query ``q_idx`` and key ``kv_idx`` of batch ``b``, query
head ``h``, and returns the score that enters the softmax. It applies before the mask and the
causal cut (an entry they remove stays removed) and before the running max:

    P = softmax(score_mod(S)) over the allowed entries, O = P V

The same Python source is compiled two ways, as a mask is (``sandbox.vocabulary.masks``):

- into the kernels as a Numba CUDA device function (:meth:`ScoreMod.device`), called where each
  kernel forms S;
- into a Numba CPU function (:meth:`ScoreMod.cpu`) that the float64 reference applies to every
  entry (:meth:`ScoreMod.apply`).

The backward needs its derivative, dS = P ∘ (dP - D) ∘ score_mod'(S): a ScoreMod may carry
``grad(score, b, h, q_idx, kv_idx) -> d score_mod / d score``, compiled the same two ways. The
built-ins carry theirs. The kernels' backward requires it; the reference's backward, without
one, takes a float64 central difference where that is exact to 1e-7 of the derivative's scale
(:meth:`ScoreMod.derivative`) and otherwise asks for ``grad=``.

Arrays it reads (ALiBi's slopes, a bias table) are captured as compile-time constants, as a
mask's are: constant memory on the GPU, limited to ``masks.MAX_CAPTURED_BYTES`` each. The IO
model counts them (the kernels' counters and the simulator alike): every tile on which a kernel
evaluates the score_mod (or its derivative) reads all of its captured arrays once from HBM,
counted as the tensor "mod" in 4-byte words (⌈bytes/4⌉ per array). The whole array per tile is
an upper bound on what a tile touches, and one rule, simple to state and to check.

Built-ins: :func:`alibi`, :func:`relative_bias`, :func:`soft_cap`.

    >>> from sandbox.vocabulary import score_mods
    >>> m = score_mods.soft_cap(30.0)
    >>> round(m(100.0, 0, 0, 0, 0), 3)
    29.924
"""

import functools
import inspect
import math

import numpy as np

from sandbox.vocabulary.masks import (CONSTANT_MEMORY_BYTES, DENSE_CHECK_ENTRIES, MAX_CAPTURED_BYTES, sampled_points,
                                      find_captured, point_loops)

#: Scores :meth:`ScoreMod.check` evaluates the compiled function at (with every index of the box).
PROBE_SCORES = (-3.5, 0.75)
#: :meth:`ScoreMod.derivative` without ``grad``: the central difference's step, relative to 1 + |s|.
FD_STEP = 1e-5
#: ... and the most it may differ (relative to 1 + |derivative|) from the difference of twice the step:
#: far below any fp32 tolerance, so the reference's derivative is exact for the tests' purposes.
FD_AGREEMENT = 1e-7
#: Bytes per word of the "mod" tensor's count (the IO model counts captured arrays in 4-byte words).
WORD_BYTES = 4


class ScoreMod:
    """A score modification ``fn(score, b, h, q_idx, kv_idx) -> float``, with its compiled forms.

    Args:
        fn: the function (plain Python, Numba-compilable).
        name: shown in errors (default: the function's name).
        grad: optionally ``grad(score, b, h, q_idx, kv_idx) -> float``, d fn / d score; the kernels'
            backward needs it.

    Raises:
        TypeError: ``fn`` or ``grad`` not callable, or not a function of five parameters.
    """

    def __init__(self, fn, name=None, grad=None):
        for what, f in (("score_mod", fn), ("grad", grad)):
            if f is None and what == "grad":
                continue
            if not callable(f):
                raise TypeError(f"{what}: expected a function {what}(score, b, h, q_idx, kv_idx) -> float, "
                                f"got {type(f).__name__}")
            _check_arity(f, what)
        self.fn = fn
        self.grad = grad
        self.name = name or getattr(fn, "__name__", "score_mod")
        self._checked = set()  # boxes checked already

    def __call__(self, score, b, h, q_idx, kv_idx):
        return self.fn(score, b, h, q_idx, kv_idx)

    def __repr__(self):
        return f"ScoreMod({self.name})"

    # -- compiled forms -------------------------------------------------------------
    def _compile_cpu(self, f, what):
        import numba
        from numba import float32, float64, int64, types

        compiled = numba.njit(boundscheck=True)(f)
        for score_type in (float32, float64):  # the kernels' score, the reference's
            try:
                compiled.compile((score_type, int64, int64, int64, int64))
            except Exception as e:  # numba's TypingError and friends: one line
                raise TypeError(f"score_mod {self.name}: Numba cannot compile its {what} as "
                                f"{what}(score, b, h, q_idx, kv_idx) -> float: {_first_line(e)}") from e
        for sig in compiled.nopython_signatures:
            ret = sig.return_type
            if not isinstance(ret, types.Float):
                raise TypeError(f"score_mod {self.name}: its {what} must return a float (the modified score), but "
                                f"returns {ret} for a {sig.args[0]} score (return a float, e.g. `return score + 1.0`)")
        return compiled

    @functools.cached_property
    def _cpu(self):
        return self._compile_cpu(self.fn, "score_mod")

    @functools.cached_property
    def _grad_cpu(self):
        return None if self.grad is None else self._compile_cpu(self.grad, "grad")

    def cpu(self):
        """The Numba CPU function (compiled and type-checked once; indexing is bounds-checked).

        Raises:
            TypeError: Numba cannot compile it, or it does not return a float.
        """
        return self._cpu

    def grad_cpu(self):
        """The Numba CPU function of ``grad`` (None without one); as :meth:`cpu`."""
        return self._grad_cpu

    @functools.cached_property
    def _device(self):
        from numba import cuda

        return cuda.jit(device=True)(self.fn)

    @functools.cached_property
    def _grad_device(self):
        from numba import cuda

        return None if self.grad is None else cuda.jit(device=True)(self.grad)

    def device(self):
        """The Numba CUDA device function the kernels call (compiled on first kernel build)."""
        return self._device

    def grad_device(self):
        """The CUDA device function of ``grad`` (None without one)."""
        return self._grad_device

    def check_device(self):
        """Compile the CUDA device functions for an fp32 score now, not inside a kernel build.

        Under Numba's CUDA simulator a device function is the Python function itself: nothing is
        compiled, and this returns at once.

        Raises:
            TypeError: Numba cannot compile it (or ``grad``) for CUDA.
        """
        from numba import float32, int64

        for what, dev in (("score_mod", self.device()), ("grad", self.grad_device())):
            compile_device = getattr(dev, "compile_device", None)
            if compile_device is None:  # no grad, or the simulator's device function: plain Python
                continue
            try:
                compile_device((float32, int64, int64, int64, int64))
            except Exception as e:
                raise TypeError(f"score_mod {self.name}: Numba cannot compile its {what} for CUDA as a device "
                                f"function {what}(score, b, h, q_idx, kv_idx) -> float: {_first_line(e)}") from e
        return self

    def captured_arrays(self):
        """The NumPy arrays the function and its ``grad`` read from their closures and globals."""
        return find_captured(self.fn, self.grad)

    def captured_words(self):
        """The 4-byte words of all captured arrays (⌈bytes/4⌉ each): what one tile that evaluates it reads."""
        return sum(-(-a.nbytes // WORD_BYTES) for a in self.captured_arrays())

    def check_captured(self):
        """Hold the captured arrays to CUDA's constant memory, as a mask's.

        Raises:
            ValueError: an array over ``MAX_CAPTURED_BYTES``, or all of them over ``CONSTANT_MEMORY_BYTES``.
        """
        arrays = self.captured_arrays()
        for a in arrays:
            if a.nbytes > MAX_CAPTURED_BYTES:
                raise ValueError(
                    f"score_mod {self.name}: captures an array of {a.nbytes} bytes ({a.dtype} {a.shape}); captured "
                    f"arrays become CUDA constant memory, so each is limited to {MAX_CAPTURED_BYTES} bytes (use a "
                    f"smaller table or dtype)")
        total = sum(a.nbytes for a in arrays)
        if total > CONSTANT_MEMORY_BYTES:
            raise ValueError(f"score_mod {self.name}: captures {total} bytes of arrays in all; they become CUDA "
                             f"constant memory, {CONSTANT_MEMORY_BYTES} bytes (use smaller tables)")
        return self

    def check(self, problem, backward=False):
        """Validate against ``problem`` before any launch.

        In order: it (and ``grad``) compiles for the CPU for an fp32 and a float64 score and returns
        a float; its captured arrays fit constant memory; it compiles as a CUDA device function
        (on a GPU); the Python function returns a float at the corners of the (b, h, q_idx, kv_idx)
        box; the compiled function runs, twice, at every point of the box (sampled above
        ``masks.DENSE_CHECK_ENTRIES``, as a mask's) for each of :data:`PROBE_SCORES`, bounds-checked,
        and gives the same answer both times. ``backward``: it must have a ``grad`` (the kernels' backward uses it).

        Raises:
            TypeError: not compilable, a non-float result, or no ``grad`` for a backward.
            ValueError: it raised (an index past a captured array, for one), it is not
                deterministic, or its captured arrays overflow constant memory.
        """
        if backward and self.grad is None:
            raise TypeError(f"score_mod {self.name}: the backward needs its derivative d score_mod / d score; pass "
                            f"ScoreMod(fn, grad=lambda score, b, h, q_idx, kv_idx: ...) (the built-ins have theirs)")
        self.cpu()
        self.grad_cpu()
        self.check_captured()
        self.check_device()
        box = (problem.batch, problem.heads, problem.n_q, problem.n_kv)
        if box in self._checked:
            return self
        for what, f in (("score_mod", self.fn), ("grad", self.grad)):
            if f is None:
                continue
            for b, h, q, k in _probe_points(box):
                try:
                    r = f(0.5, b, h, q, k)
                except Exception as e:
                    raise ValueError(f"score_mod {self.name}: its {what} raised {type(e).__name__} at (score=0.5, "
                                     f"b={b}, h={h}, q_idx={q}, kv_idx={k}): {e}") from e
                if not isinstance(r, (float, np.floating)):
                    raise TypeError(f"score_mod {self.name}: its {what} must return a float (the modified score), "
                                    f"returned {type(r).__name__} {r!r} at (b={b}, h={h}, q_idx={q}, kv_idx={k})")
        over_box, at_points = point_loops()
        if int(np.prod(box, dtype=object)) <= DENSE_CHECK_ENTRIES:
            loop, over = over_box, np.array(box, np.int64)
        else:
            loop, over = at_points, sampled_points(box)
        for what, f in (("score_mod", self.cpu()), ("grad", self.grad_cpu())):
            if f is None:
                continue
            for score in PROBE_SCORES:
                at = np.zeros(4, np.int64)
                got = np.zeros(2, np.float64)
                try:
                    differs = loop(f, _kernels()[1], (float(score), got), over, at)
                except Exception as e:
                    b, h, q, k = (int(x) for x in at)
                    raise ValueError(f"score_mod {self.name}: its {what} raised {type(e).__name__} at (score={score}, "
                                     f"b={b}, h={h}, q_idx={q}, kv_idx={k}): {e}") from e
                if differs:
                    b, h, q, k = (int(x) for x in at)
                    raise ValueError(
                        f"score_mod {self.name} is not deterministic: its {what} at (score={score}, b={b}, h={h}, "
                        f"q_idx={q}, kv_idx={k}) returned {got[0]}, then {got[1]}; the kernels and the reference "
                        f"evaluate it separately, so it must depend on its arguments only")
        self._checked.add(box)
        return self

    # -- the reference's side -------------------------------------------------------
    def _over(self, f, what, s):
        out = np.empty(s.shape, np.float64)
        at = np.zeros(4, np.int64)
        try:
            s_flat = np.ascontiguousarray(s, dtype=np.float64).reshape(-1)
            point_loops()[0](f, _kernels()[0], (s_flat, out.reshape(-1)), np.array(s.shape, np.int64), at)
        except Exception as e:
            b, h, q, k = (int(x) for x in at)
            raise ValueError(f"score_mod {self.name}: its {what} raised {type(e).__name__} at (b={b}, h={h}, "
                             f"q_idx={q}, kv_idx={k}): {e}") from e
        return out

    def apply(self, s):
        """score_mod(S) at every entry of S (B, H, Nq, Nk), evaluated in float64: a new float64 array.

        Raises:
            TypeError: as :meth:`cpu`.
            ValueError: the function raised (with the point).
        """
        return self._over(self.cpu(), "score_mod", s)

    def derivative(self, s, where=None):
        """d score_mod / d score at every entry of S (B, H, Nq, Nk), float64: ``grad`` where given;
        else a central difference with step :data:`FD_STEP`·(1 + |s|), held to agree with the
        difference of twice the step within :data:`FD_AGREEMENT`·(1 + |derivative|) at the entries
        ``where`` (a bool array of S's shape; default all finite S).

        Raises:
            ValueError: no ``grad`` and the central difference is not that exact (the function
                is not smooth there, or not in float64), naming the first such entry.
        """
        if self.grad is not None:
            return self._over(self.grad_cpu(), "grad", s)
        s = np.asarray(s, np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            step = FD_STEP * (1.0 + np.abs(s))
            d1 = (self.apply(s + step) - self.apply(s - step)) / (2 * step)
            d2 = (self.apply(s + 2 * step) - self.apply(s - 2 * step)) / (4 * step)
            bad = ~(np.abs(d1 - d2) <= FD_AGREEMENT * (1.0 + np.abs(d1)))
        bad &= np.isfinite(s) if where is None else where
        if bad.any():
            b, h, q, k = (int(x) for x in np.argwhere(bad)[0])
            raise ValueError(
                f"score_mod {self.name} has no grad, and its central difference is not exact to {FD_AGREEMENT} at "
                f"(score={s[b, h, q, k]}, b={b}, h={h}, q_idx={q}, kv_idx={k}) (two steps disagree: "
                f"{d1[b, h, q, k]} and {d2[b, h, q, k]}); pass ScoreMod(fn, grad=...) with its derivative")
        return d1


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_arity(fn, what):
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return  # builtins without a signature: Numba will say
    if len(params) != 5:
        names = ", ".join(p.name for p in params)
        raise TypeError(f"{what}: expected a function of five arguments {what}(score, b, h, q_idx, kv_idx) -> float, "
                        f"got {getattr(fn, '__name__', 'a function')}({names})")


def _probe_points(box):
    bs, hs = sorted({0, box[0] - 1}), sorted({0, box[1] - 1})
    qs = sorted({0, box[2] // 2, box[2] - 1})
    ks = sorted({0, box[3] // 2, box[3] - 1})
    return [(b, h, q, k) for b in bs for h in hs for q in qs for k in ks]


def as_score_mod(score_mod):
    """``score_mod`` as a :class:`ScoreMod` (a plain function is wrapped; None stays None)."""
    if score_mod is None or isinstance(score_mod, ScoreMod):
        return score_mod
    return ScoreMod(score_mod)


@functools.lru_cache(maxsize=None)
def _kernels():
    """The visits of ``masks.point_loops`` a score_mod is evaluated with: (apply at an entry of S, evaluate
    twice at a score)."""
    import numba

    @numba.njit(cache=False)
    def apply(f, args, i, b, h, q, k):
        """out[i] = f(s[i], b, h, q, k) for ``args`` = (s, out), both flat."""
        s, out = args
        out[i] = f(s[i], b, h, q, k)
        return False

    @numba.njit(cache=False)
    def twice(f, args, i, b, h, q, k):
        """f at (score, b, h, q, k), twice, for ``args`` = (score, got): False if the answers agree (NaN
        agrees with NaN), else True with them in ``got``."""
        score, got = args
        x = f(score, b, h, q, k)
        y = f(score, b, h, q, k)
        if x == y or (x != x and y != y):
            return False
        got[0] = x
        got[1] = y
        return True

    return apply, twice


# -- built-ins ----------------------------------------------------------------------------

def _unit_grad(score, b, h, q_idx, kv_idx):
    return 1.0


def alibi(slopes):
    """ALiBi (Press et al.): score + slope[h]·(kv_idx - q_idx), a linear bias by distance per head.

    Args:
        slopes: one slope per query head (H,), real; captured as fp32. :func:`alibi_slopes` gives
            the paper's geometric slopes.
    """
    sl = np.asarray(slopes)
    if sl.ndim != 1 or sl.size == 0 or not np.issubdtype(sl.dtype, np.number) or np.iscomplexobj(sl):
        raise ValueError(f"slopes: expected a non-empty 1-D array of real numbers (one per head), got {sl!r}")
    sl = sl.astype(np.float32)
    if not np.isfinite(sl).all():
        raise ValueError(f"slopes: expected finite numbers, got {sl!r}")
    _check_small(sl, "slopes")

    def alibi_mod(score, b, h, q_idx, kv_idx):
        return score + sl[h] * (kv_idx - q_idx)

    return ScoreMod(alibi_mod, name=f"alibi{sl.size}", grad=_unit_grad)


def alibi_slopes(heads):
    """The ALiBi paper's slopes for ``heads`` heads: 2^(-8·i/H) for i = 1..H (fp32)."""
    h = _pos_int(heads, "heads")
    return (2.0 ** (-8.0 * np.arange(1, h + 1) / h)).astype(np.float32)


def relative_bias(table):
    """A learned relative-position bias: score + table[clip(kv_idx - q_idx, -R, R) + R].

    Args:
        table: (2R + 1,) for every head or (H, 2R + 1) per head, real; entry R is the bias of
            distance 0, entry R + t that of key = query + t; distances beyond ±R take the end
            entries. Captured as fp32.
    """
    tab = np.asarray(table)
    if tab.ndim not in (1, 2) or 0 in tab.shape or tab.shape[-1] % 2 == 0 or not np.issubdtype(tab.dtype, np.number) \
            or np.iscomplexobj(tab):
        raise ValueError(f"table: expected a real array (2R + 1,) or (H, 2R + 1) (odd length: distances -R..R), "
                         f"got {tab.dtype} {tab.shape}")
    tab2 = (tab[None] if tab.ndim == 1 else tab).astype(np.float32)
    if not np.isfinite(tab2).all():
        raise ValueError("table: expected finite numbers")
    _check_small(tab2, "table")
    per_head = tab.ndim == 2
    n_h, width = tab2.shape
    radius = (width - 1) // 2

    def relative_bias_mod(score, b, h, q_idx, kv_idx):
        t = kv_idx - q_idx
        if t > radius:
            t = radius
        if t < -radius:
            t = -radius
        hh = h if per_head else 0
        return score + tab2[hh, t + radius]

    return ScoreMod(relative_bias_mod, name=f"relbias{radius}", grad=_unit_grad)


def soft_cap(cap):
    """Logit soft-capping (Gemma 2): cap·tanh(score / cap), which keeps every score within ±cap.

    Its derivative is 1 - tanh²(score / cap).
    """
    if isinstance(cap, bool) or not isinstance(cap, (int, float, np.integer, np.floating)) \
            or not np.isfinite(cap) or cap <= 0:
        raise ValueError(f"cap: expected a positive finite number, got {cap!r}")
    c = float(cap)

    def soft_cap_mod(score, b, h, q_idx, kv_idx):
        return c * math.tanh(score / c)

    def soft_cap_grad(score, b, h, q_idx, kv_idx):
        t = math.tanh(score / c)
        return 1.0 - t * t

    return ScoreMod(soft_cap_mod, name=f"softcap{c:g}", grad=soft_cap_grad)


def _pos_int(x, name):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1:
        raise ValueError(f"{name}: expected a positive int, got {x!r}")
    return int(x)


def _check_small(arr, name):
    if arr.nbytes > MAX_CAPTURED_BYTES:
        raise ValueError(f"{name}: {arr.nbytes} bytes; a score_mod's captured arrays become CUDA constant memory, "
                         f"so they are limited to {MAX_CAPTURED_BYTES} bytes")


#: The built-ins the CLI names (``--score-mod alibi``, ``softcap:30``):
#: name -> (make(parameter, heads), what the parameter is).
BUILTINS = {
    "alibi": (lambda param, heads: alibi(alibi_slopes(heads)), "the paper's slopes for H heads"),
    "softcap": (lambda param, heads: soft_cap(float(param)), "the cap, e.g. softcap:30"),
    "relbias": (lambda param, heads: relative_bias(-0.1 * np.abs(np.arange(-int(param), int(param) + 1))),
                "R: the table -0.1·|t| for distances t in -R..R, e.g. relbias:8"),
}


def parse(text, heads):
    """The built-in score_mod ``text`` names: ``name`` or ``name:parameter`` (:data:`BUILTINS`).

    Raises:
        ValueError: an unknown name, a missing or bad parameter.
    """
    name, _, param = str(text).partition(":")
    if name not in BUILTINS:
        raise ValueError(f"unknown score_mod {name!r}; expected one of {', '.join(BUILTINS)} (e.g. softcap:30)")
    make, what = BUILTINS[name]
    if name == "alibi" and param:
        raise ValueError(f"score_mod alibi takes no parameter ({what}), got {text!r}")
    if name != "alibi" and not param:
        raise ValueError(f"score_mod {name} takes a parameter: {what}")
    try:
        return make(param, heads)
    except ValueError as e:
        raise ValueError(f"score_mod {text!r}: {e} ({what})") from None
