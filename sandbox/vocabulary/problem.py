"""One attention call's shape: the problem, kept apart from the schedule that maps it."""

import dataclasses
import math
import numbers

import numpy as np

from sandbox.vocabulary.dtypes import as_dtype


@dataclasses.dataclass(frozen=True)
class Problem:
    """Shape of one attention call: q is (batch, heads, n_q, head_dim), k (batch, heads_kv, n_kv, head_dim),
    v (batch, heads_kv, n_kv, head_dim_v) and the output O (batch, heads, n_q, head_dim_v).

    Args:
        batch, heads: B, H.
        n_q, n_kv: Nq, Nk (they may differ: cross-attention).
        head_dim: d.
        dtype: input dtype, a NumPy dtype or its name ("float32", "float16").
        causal: top-left causal mask (query i sees keys j <= i), as PyTorch SDPA's ``is_causal``.
        scale: softmax scale; ``None`` means 1/sqrt(d).
        heads_kv: H_kv, the K/V heads (grouped-query attention: H_kv divides H, and query head h
            reads K/V head h // (H / H_kv); H_kv = 1 is multi-query attention). ``None`` means H.
        head_dim_v: d_v, V's and O's head dim (S = QKᵀ contracts over d, O = PV has d_v columns).
            ``None`` means d.

    Raises:
        ValueError, TypeError: non-positive sizes, a ``heads_kv`` that does not divide ``heads``,
            unsupported dtype, a ``causal`` that is not a bool, a ``scale`` that is not a finite
            real number.
    """

    batch: int
    heads: int
    n_q: int
    n_kv: int
    head_dim: int
    dtype: object = "float32"
    causal: bool = False
    scale: float = None
    heads_kv: int = None
    head_dim_v: int = None

    def __post_init__(self):
        if self.heads_kv is None:
            object.__setattr__(self, "heads_kv", self.heads)
        if self.head_dim_v is None:
            object.__setattr__(self, "head_dim_v", self.head_dim)
        for name in ("batch", "heads", "n_q", "n_kv", "head_dim", "heads_kv", "head_dim_v"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.heads % self.heads_kv:
            raise ValueError(f"heads_kv: {self.heads_kv} K/V heads do not divide the {self.heads} query heads; "
                             f"pick a divisor of heads (heads_kv=1 shares one K/V head among all)")
        object.__setattr__(self, "dtype", as_dtype(self.dtype))
        object.__setattr__(self, "causal", as_bool(self.causal, "causal"))
        object.__setattr__(self, "scale", resolve_scale(self.scale, self.head_dim))

    @property
    def bh(self):
        """B·H, the number of independent (batch, head) slices."""
        return self.batch * self.heads

    @property
    def group(self):
        """H / H_kv, the query heads that share one K/V head (1 without grouping)."""
        return self.heads // self.heads_kv

    @property
    def bh_kv(self):
        """B·H_kv, the number of (batch, K/V head) slices."""
        return self.batch * self.heads_kv


def as_bool(value, name):
    """``value`` as a bool; only ``True``/``False`` (or NumPy's ``bool_``) are taken.

    A string such as ``"False"`` is truthy, so converting it would silently turn a flag on.

    Raises:
        TypeError: naming ``name``, for anything else.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")


def resolve_scale(scale, head_dim):
    """``scale`` as a finite float, 1/sqrt(head_dim) when ``None``.

    Raises:
        ValueError: if ``scale`` is not a finite real number (a str, a bool, a complex number,
            NaN or ±inf).
    """
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise ValueError(f"scale: expected a finite float or None, got {scale!r} ({type(scale).__name__})")
    value = float(scale)
    if not math.isfinite(value):
        raise ValueError(f"scale: expected a finite float or None, got {scale!r}")
    return value
