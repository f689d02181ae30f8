"""The public API under arguments of every wrong type and value: a right answer or an error naming the argument.

Each example takes valid arguments (tiny: B = H = 1, N <= 8, d <= 8) and replaces one of them,
or none, with a value drawn from a pool of wrong types and values (strings, None, bools, ints
negative and huge, floats NaN/inf/huge, complex numbers, lists, arrays of the wrong dtype, shape
or ndim). The outcome must be a result equal to the reference's for those very arguments, or a
ValueError/TypeError whose message names the replaced argument. Anything else (another
exception type, an error that blames something else, a wrong result) fails. The kernels run
only when the arguments are valid.
"""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sandbox import Problem, Schedule
from sandbox.vocabulary.ioreport import IOReport
from sandbox import attention, attention_backward, simulate
from sandbox.vocabulary.reference import reference_attention, reference_attention_backward
from simulator import theory
from tests.tolerances import gradient_tolerances, tolerances

SCALARS = st.one_of(
    st.none(), st.booleans(), st.sampled_from([np.True_, "", "False", "0.5", "flash2", b"1", 1j, [], [1, 2], {}]),
    st.text(max_size=3), st.integers(-3, 3), st.sampled_from([2**31, 2**63, 2**70, -(2**70)]),
    st.floats(-1e6, 1e6), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 0.5, 2.5]),
    st.complex_numbers(max_magnitude=4),
)
ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int64, np.bool_, np.complex64, "U2"]),
    shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),
    elements=None, fill=None,
).filter(lambda a: a.dtype.kind != "f" or np.isfinite(a).all()).map(
    lambda a: np.clip(a, -8, 8) if a.dtype.kind == "f" else a)  # wrong arrays, not numerics at fp32's edge
WRONG = st.one_of(SCALARS, ARRAYS)


def _fp32_meaningful_scale(x):
    """Scales the kernels are held to the reference at: logits |scale·q·k| up to ~1e4 (inputs ~N(0, 1),
    d <= 8); finite scales past that up to fp32's range are a question of fp32 accuracy, not of arguments."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        return True
    x = float(x)
    return not np.isfinite(x) or abs(x) <= 100 or abs(x) > np.finfo(np.float32).max


#: Wrong values for ``scale`` where the kernels run.
WRONG_SCALE = WRONG.filter(_fp32_meaningful_scale)


def names_argument(err, name):
    return re.search(rf"(^|[^\w]){re.escape(name)}([^\w]|$)", str(err)) is not None


def call(fn, args, bad):
    """(result, None) or (None, error); any exception other than ValueError/TypeError propagates."""
    try:
        return fn(**args), None
    except (ValueError, TypeError) as err:
        assert bad is not None, f"valid arguments refused: {err!r}"
        assert names_argument(err, bad), f"{bad}={args[bad]!r}: the error does not name {bad!r}: {err!r}"
        return None, err


@st.composite
def with_one_wrong(draw, valid, extra=None):
    """``valid`` (a dict) with one argument, or none, replaced by a wrong value; and its name."""
    args = dict(valid)
    bad = draw(st.sampled_from([None, *args]))
    if bad is not None:
        args[bad] = draw((extra or {}).get(bad, WRONG))
    return args, bad


@st.composite
def qkv(draw, dtype=np.float32):
    n_q, n_kv, d = draw(st.integers(1, 8)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    q, k, v = (rng.standard_normal((1, 1, n, d)).astype(dtype) for n in (n_q, n_kv, n_kv))
    return q, k, v


def arrays_like(x):
    """Arrays near ``x``: its shape with one side changed, another dtype, one dim more or less."""
    return st.one_of(
        ARRAYS, st.just(x.astype(np.float64)), st.just(x[..., :1]), st.just(x[0]), st.just(x[None]),
        st.just(x.astype(np.int32)), st.just(x.tolist()),
    )


SCHEDULE = Schedule("flash2", block_q=4, block_kv=4)


@given(data=st.data(), inputs=qkv())
def test_attention(data, inputs):
    q, k, v = inputs
    valid = dict(q=q, k=k, v=v, schedule=SCHEDULE, causal=False, scale=None, return_lse=True, count_io=False)
    extra = {x: arrays_like(a) | WRONG for x, a in zip("qkv", inputs)}
    args, bad = data.draw(with_one_wrong(valid, dict(extra, scale=WRONG_SCALE)))
    result, err = call(attention, args, bad)
    if err is None:
        q, k, v = args["q"], args["k"], args["v"]
        result = result if isinstance(result, tuple) else (result,)
        out, lse = result[0], (result[1] if args["return_lse"] else None)
        assert len(result) == 1 + bool(args["return_lse"]) + bool(args["count_io"])
        ref_out, ref_lse = reference_attention(q, k, v, causal=args["causal"], scale=args["scale"], return_lse=True)
        atol_out, atol_lse = tolerances(q, k, v, ref_out, ref_lse, args["causal"], args["scale"] or q.shape[-1] ** -0.5,
                                        q.dtype)
        np.testing.assert_allclose(out, ref_out, rtol=0, atol=atol_out)
        if lse is not None:
            np.testing.assert_allclose(lse, ref_lse, rtol=0, atol=atol_lse)


@given(data=st.data(), inputs=qkv())
def test_attention_backward(data, inputs):
    q, k, v = inputs
    out, lse = reference_attention(q, k, v, return_lse=True)
    out, lse = out.astype(np.float32), lse.astype(np.float32)
    dout = np.ones_like(q)
    valid = dict(q=q, k=k, v=v, out=out, lse=lse, dout=dout, schedule=SCHEDULE, causal=False, scale=None,
                 count_io=False)
    extra = {x: arrays_like(a) | WRONG for x, a in (("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse),
                                                    ("dout", dout))}
    args, bad = data.draw(with_one_wrong(valid, dict(extra, scale=WRONG_SCALE)))
    if bad in ("q", "k", "v", "causal", "scale"):  # out and lse are the forward's of these very arguments
        try:
            out, lse = reference_attention(args["q"], args["k"], args["v"], causal=args["causal"],
                                           scale=args["scale"], return_lse=True)
            args.update(out=out.astype(args["q"].dtype), lse=lse.astype(np.float32))
        except (ValueError, TypeError):
            pass  # the kernel's entry point must refuse them too
    result, err = call(attention_backward, args, bad)
    if err is None:
        a = args
        scale = a["scale"] if a["scale"] is not None else q.shape[-1] ** -0.5
        refs = reference_attention_backward(a["q"], a["k"], a["v"], a["dout"], causal=a["causal"], scale=a["scale"],
                                            out=a["out"], lse=a["lse"])
        atols = gradient_tolerances(a["q"], a["k"], a["v"], a["dout"], refs, a["causal"], scale, q.dtype, a["out"],
                                    a["lse"])
        for got, ref, atol in zip(result[:3], refs, atols):
            np.testing.assert_allclose(got, ref, rtol=0, atol=atol)


@given(data=st.data(), inputs=qkv(np.float64))
def test_reference_attention(data, inputs):
    q, k, v = inputs
    valid = dict(q=q, k=k, v=v, causal=True, scale=None, return_lse=False)
    args, bad = data.draw(with_one_wrong(valid, {x: arrays_like(a) | WRONG for x, a in zip("qkv", inputs)}))
    result, err = call(reference_attention, args, bad)
    if err is None:
        q, k, v = (np.asarray(args[x], np.float64) for x in "qkv")
        scale = float(args["scale"]) if args["scale"] is not None else q.shape[-1] ** -0.5
        s = scale * np.einsum("bhid,bhjd->bhij", q, k)
        if args["causal"]:
            s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        expected = np.einsum("bhij,bhjd->bhid", p / p.sum(-1, keepdims=True), v)
        np.testing.assert_allclose(result[0] if args["return_lse"] else result, expected, rtol=1e-12, atol=1e-12)


@given(data=st.data(), inputs=qkv(np.float64))
def test_reference_attention_backward(data, inputs):
    q, k, v = inputs
    out, lse = reference_attention(q, k, v, return_lse=True)
    dout = np.ones_like(q)
    valid = dict(q=q, k=k, v=v, dout=dout, causal=False, scale=None, out=out, lse=lse)
    extra = {x: arrays_like(a) | WRONG for x, a in (("q", q), ("k", k), ("v", v), ("out", out), ("lse", lse),
                                                    ("dout", dout))}
    args, bad = data.draw(with_one_wrong(valid, extra))
    # A saved lse that does not belong to these q, k, scale (any float array of the right shape
    # is a valid argument) may overflow exp(S - L): a numerical outcome, not an argument error.
    with np.errstate(over="ignore", invalid="ignore"):
        result, err = call(reference_attention_backward, args, bad)
    if err is None:  # the same gradients from the exact forward (out, lse recomputed)
        a = args
        exact = reference_attention_backward(*(np.asarray(a[x], np.float64) for x in ("q", "k", "v", "dout")),
                                             causal=bool(a["causal"]), scale=a["scale"])
        same_forward = bad in (None, "dout")  # out and lse are those of this forward
        for got, want in zip(result, exact):
            assert got.shape == want.shape
            if same_forward:
                np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


PROBLEM = dict(batch=1, heads=2, n_q=8, n_kv=6, head_dim=8, dtype="float32", causal=False, scale=None)


@given(data=st.data())
def test_problem(data):
    args, bad = data.draw(with_one_wrong(PROBLEM))
    result, err = call(Problem, args, bad)
    if err is None:
        for name in ("batch", "heads", "n_q", "n_kv", "head_dim"):
            assert type(getattr(result, name)) is int and getattr(result, name) == args[name] > 0
        assert result.causal is bool(args["causal"]) and isinstance(args["causal"], (bool, np.bool_))
        assert np.isfinite(result.scale)


SCHEDULE_ARGS = dict(kind="flash2", block_q=8, block_kv=4, thread_q=2, thread_kv=2, sram_bytes=2**16, kv_splits=1,
                     math="fma")


@given(data=st.data())
def test_schedule(data):
    args, bad = data.draw(with_one_wrong(SCHEDULE_ARGS))
    result, err = call(Schedule, args, bad)
    if err is None:
        for name in ("block_q", "block_kv", "thread_q", "thread_kv", "sram_bytes", "kv_splits"):
            assert type(getattr(result, name)) is int and getattr(result, name) > 0
            assert args[name] is None or getattr(result, name) == args[name]  # None: the default thread tile
        assert result.threads <= 1024 and result.sram_footprint(0, "float16") <= result.sram_bytes


@given(data=st.data())
def test_schedule_from_sram(data):
    args, bad = data.draw(with_one_wrong(dict(sram_bytes=2**16, head_dim=32, kind="flash2", dtype="float32")))
    result, err = call(lambda **a: Schedule.from_sram(a.pop("sram_bytes"), **a), args, bad)
    if err is None:
        assert result.kind == args["kind"] and result.sram_bytes == args["sram_bytes"]
        assert result.sram_footprint(args["head_dim"], np.dtype(args["dtype"])) <= args["sram_bytes"]


@given(data=st.data())
def test_simulate(data):
    kind = data.draw(st.sampled_from(["standard", "flash1", "flash2"]))
    valid = dict(schedule=Schedule(kind, block_q=4, block_kv=4), problem=Problem(**PROBLEM), backward=False)
    extra = {"problem": st.builds(Problem, **{**{k: st.just(v) for k, v in PROBLEM.items()}, "n_q": st.integers(1, 40),
                                             "causal": st.booleans()}) | WRONG,
             "schedule": st.builds(Schedule, st.just(kind), block_q=st.integers(1, 16), block_kv=st.integers(1, 16))
             | WRONG}
    args, bad = data.draw(with_one_wrong(valid, extra))
    result, err = call(simulate, args, bad)
    if err is None:
        assert isinstance(result, IOReport)
        assert all(type(n) is int for field in result.counts().values() for n in field.values())
        p, s = args["problem"], args["schedule"]
        if not p.causal and not args["backward"]:
            exact = {"standard": theory.standard_hbm_exact, "flash1": theory.flash1_hbm_exact,
                     "flash2": theory.flash2_hbm_exact}[kind]
            hbm = result.total("hbm_reads") + result.total("hbm_writes")
            assert hbm == p.bh * exact(p.n_q, p.n_kv, p.head_dim, s.block_q, s.block_kv)


def test_names_argument():
    assert names_argument(ValueError("q, k, v: expected one dtype"), "k")
    assert not names_argument(ValueError("block_q: expected a positive int"), "q")
    with pytest.raises(AssertionError, match="does not name"):
        call(lambda **a: Problem(**a), dict(PROBLEM, batch="1"), "heads")
