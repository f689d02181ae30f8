"""Attention IO sandbox: one block schedule, executed by Numba CUDA kernels and counted by a simulator.

The vocabulary lives here (``Schedule``, ``Problem``, ``IOReport``, the NumPy
reference); ``attention`` runs the kernels and ``simulate`` the IO model. Both
executors are imported lazily, on first use, so that importing ``sandbox``
never touches ``numba.cuda``. Importing it chooses the backend (Numba's CUDA
simulator when no GPU is present; ``sandbox.runtime``), which must happen before
anything imports ``numba.cuda``, and checks that the ``kernels`` and ``simulator``
packages Python finds are the ones installed with it, not another distribution's
of the same name.

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
Q, K, V    ``q``, ``k``, ``v``   inputs, (B, H, N, d)
S          "S"                   scale·QKᵀ
P          "P"                   softmax(S) (or exp(S - m) inside a tile)
O          ``out``, "O"          PV, the output
ℓ, m       "l", "m"              running row sum and row max
L          ``lse``, "L"          log-sum-exp, m + log ℓ
m_ij,l_ij  ``m_ij``, ``l_ij``    the current tile's row max and row sum
alpha      ``alpha``             rescale factor exp(m_i - m_new)
=========  ====================  ===============================================
"""

from sandbox.runtime import check_packages, ensure_backend

ensure_backend()  # first: before anything imports numba.cuda
check_packages()

from sandbox.ioreport import IOReport, LEVELS, TENSORS  # noqa: E402
from sandbox.problem import Problem  # noqa: E402
from sandbox.reference import reference_attention, reference_attention_backward  # noqa: E402
from sandbox.schedule import KINDS, Schedule  # noqa: E402

__all__ = [
    "IOReport",
    "KINDS",
    "LEVELS",
    "Problem",
    "Schedule",
    "TENSORS",
    "attention",
    "attention_backward",
    "reference_attention",
    "reference_attention_backward",
    "simulate",
]

__version__ = "0.1.0"


def __getattr__(name):
    # The lab imports both executors; keep that off the import path of the vocabulary.
    if name in ("attention", "attention_backward", "simulate"):
        from sandbox import lab

        return getattr(lab, name)
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
