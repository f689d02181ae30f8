"""Checks of the kernels' source for what Numba's CUDA simulator lets pass and the GPU compiler does
not: CI runs the kernels under the simulator only.

The shape of ``cuda.local.array`` and ``cuda.shared.array`` must be a compile-time constant. The
simulator takes any integer; the GPU compiler takes a literal, a name bound to one (a closure
constant of the kernel maker), or a conditional between them on a constant condition (pruned
before typing), and refuses arithmetic: ``cuda.local.array(2 * MT, float32)`` failed to type on
the H200 where ``NROW = 2 * MT`` computed in the maker and ``cuda.local.array(NROW, float32)``
compiled.
"""

import ast
import pathlib

KERNELS = pathlib.Path(__file__).resolve().parents[2] / "kernels"


def _constant(node):
    """A literal, a name, or ``a if c else b`` of those (the GPU compiler folds each to a literal)."""
    if isinstance(node, ast.IfExp):
        return _constant(node.body) and _constant(node.orelse)
    return isinstance(node, (ast.Constant, ast.Name))


def array_shapes_not_constant(source, name="<source>"):
    """``name:line: shape`` for each ``cuda.local.array``/``cuda.shared.array`` whose shape is not a
    constant (:func:`_constant`, or a tuple of such)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "array"):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Attribute) and owner.attr in ("local", "shared")
                and isinstance(owner.value, ast.Name) and owner.value.id == "cuda"):
            continue
        shape = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "shape"), None)
        if shape is None:
            continue
        parts = shape.elts if isinstance(shape, ast.Tuple) else [shape]
        if not all(_constant(p) for p in parts):
            found.append(f"{name}:{node.lineno}: {ast.unparse(shape)}")
    return found


def test_the_check_catches_arithmetic_and_passes_constants():
    bad = "def k():\n    a = cuda.local.array(2 * MT, float32)\n    b = cuda.shared.array((N, D + 1), float32)\n"
    assert array_shapes_not_constant(bad) == ["<source>:2: 2 * MT", "<source>:3: (N, D + 1)"]
    good = ("def k():\n    a = cuda.local.array(NROW, float32)\n    b = cuda.local.array((KD if not QS else 1, 4), uint32)\n"
            "    c = cuda.shared.array(0, uint32)\n    d = np.array(2 * n)\n")
    assert array_shapes_not_constant(good) == []


def test_kernel_array_shapes_are_compile_time_constants():
    found = []
    for path in sorted(KERNELS.glob("*.py")):
        found += array_shapes_not_constant(path.read_text(encoding="utf-8"), f"kernels/{path.name}")
    assert not found, "array shapes the GPU compiler cannot fold to a constant:\n" + "\n".join(found)
