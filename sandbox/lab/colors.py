"""The colour of each schedule kind in the lab's figures (the sweeps' and the ncu check's), from the registry.

The built-in kinds keep their colours; every other registered kind takes the next of
:data:`OTHER_COLORS` in registration order (``sandbox.vocabulary.kinds.names()``), so that a kind
has the same colour in every figure of a process.
"""

from sandbox.vocabulary import kinds

#: Colours of the built-in kinds.
BUILTIN_COLORS = {"standard": "tab:red", "flash1": "tab:blue", "flash2": "tab:green", "splitkv": "tab:purple"}
#: Colours of the other registered kinds, in registration order (then again from the first).
OTHER_COLORS = ("tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
#: A kind that is not registered (a file from another session's kinds).
UNKNOWN_COLOR = "black"


def kind_colors():
    """``{kind: colour}`` of every registered kind."""
    others = [k for k in kinds.names() if k not in BUILTIN_COLORS]
    out = {k: BUILTIN_COLORS[k] for k in kinds.names() if k in BUILTIN_COLORS}
    out.update({k: OTHER_COLORS[i % len(OTHER_COLORS)] for i, k in enumerate(others)})
    return out


def kind_color(kind):
    """The colour of ``kind`` (:func:`kind_colors`), :data:`UNKNOWN_COLOR` if it is not registered."""
    return kind_colors().get(kind, UNKNOWN_COLOR)
