"""The public functions: ``attention`` and ``attention_backward`` run a schedule on the kernels,
``simulate`` counts it with the IO model, ``register_kind`` adds a kind to every layer.

They are the executors' own entry points (``kernels/entry.py``, ``simulator/entry.py``) and the
lab's registration (``sandbox/lab/kinds.py``), gathered here for ``import sandbox``.
"""

from kernels.entry import attention, attention_backward
from sandbox.lab.kinds import kind_names, register_kind
from simulator.entry import simulate

__all__ = ["attention", "attention_backward", "kind_names", "register_kind", "simulate"]
