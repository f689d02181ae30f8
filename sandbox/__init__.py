"""Attention IO sandbox: one block schedule, executed by Numba CUDA kernels and counted by a simulator.

The package is layered (README, Architecture): the vocabulary (``sandbox.vocabulary``: Schedule,
Problem, IOReport, masks, the NumPy reference) at the bottom; the two executors, ``kernels`` and
``simulator``, on it; the lab (``sandbox.lab``: bench, tuner, sweeps, plots, ncu check) on those;
and this public face on top. Importing it first chooses the backend (Numba's CUDA simulator when
no GPU is present; ``sandbox.vocabulary.runtime``), which must happen before anything imports
``numba.cuda``, and checks that the ``kernels`` and ``simulator`` packages Python finds are the
ones installed with it.

Naming (the FlashAttention paper's notation; the only names used in this project):

=========  ====================  ===============================================
paper      Python                meaning
=========  ====================  ===============================================
N          ``n_q``, ``n_kv``     sequence length (Nq queries, Nk keys/values)
d          ``head_dim``          head dimension
M          ``sram_bytes``        SRAM capacity (bytes here; elements in the paper)
Br, Bc     ``block_q``,          rows of a Q block, rows of a K/V block
           ``block_kv``
Tr, Tc     ``n_q_blocks``,       ⌈Nq/Br⌉, ⌈Nk/Bc⌉
           ``n_kv_blocks``
Q, K, V    ``q``, ``k``, ``v``   inputs, (B, H, N, d); K, V (B, H_kv, N, d)
H, H_kv    ``heads``,            query heads, K/V heads (H_kv divides H: query head
           ``heads_kv``          h reads K/V head h // (H / H_kv))
S          "S"                   scale·QKᵀ
P          "P"                   softmax(S) (or exp(S - m) inside a tile)
O          ``out``, "O"          PV, the output
ℓ, m       "l", "m"              running row sum and row max
L          ``lse``, "L"          log-sum-exp, m + log ℓ
m_ij,l_ij  ``m_ij``, ``l_ij``    the current tile's row max and row sum
alpha      ``alpha``             rescale factor exp(m_i - m_new)
=========  ====================  ===============================================
"""

from sandbox.vocabulary.runtime import __version__, prepare

prepare()  # first: the backend, before anything imports numba.cuda; then the packages' origin

from sandbox.api import attention, attention_backward, kind_names, register_kind, simulate  # noqa: E402
from sandbox.vocabulary import masks, score_mods  # noqa: E402
from sandbox.vocabulary.ioreport import IOReport, LEVELS, TENSORS  # noqa: E402
from sandbox.vocabulary.problem import Problem  # noqa: E402
from sandbox.vocabulary.reference import reference_attention, reference_attention_backward  # noqa: E402
from sandbox.vocabulary.schedule import Schedule  # noqa: E402

__all__ = [
    "IOReport",
    "LEVELS",
    "Problem",
    "Schedule",
    "TENSORS",
    "__version__",
    "attention",
    "attention_backward",
    "kind_names",
    "masks",
    "reference_attention",
    "reference_attention_backward",
    "register_kind",
    "score_mods",
    "simulate",
]
