"""The Numba CUDA kernels: one module per kind (``standard``, ``flash1``, ``flash2``, ``splitkv``),
fast builds (``flash2_fast``, ``flash2_tc``), the backward, shared tile operations and IO counters,
and ``launch``, which compiles and launches them (see ``sandbox.vocabulary.kinds`` for the registry).

Imports the vocabulary (``sandbox``) and never the simulator. Importing this package refuses a
backend that cannot run kernels (``sandbox.vocabulary.runtime.check_backend``).
"""

from sandbox.vocabulary.runtime import check_backend, ensure_backend

ensure_backend()
check_backend()
