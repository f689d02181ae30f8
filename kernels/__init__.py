"""The Numba CUDA kernels: one module per kind (``standard``, ``flash1``, ``flash2``, ``splitkv``),
flash2's fast builds (``flash2_fast``, ``flash2_tc``, sharing ``flash2_common``), the backward,
shared tile operations and IO counters; ``registry`` declares each kind's kernels, ``builds``
chooses which build runs a call, and ``launch`` compiles and launches it.

Imports the vocabulary (``sandbox``) and never the simulator. Importing this package refuses a
backend that cannot run kernels (``sandbox.vocabulary.runtime.check_backend``).
"""

from sandbox.vocabulary.runtime import check_backend, ensure_backend

ensure_backend()
check_backend()
