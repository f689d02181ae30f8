"""The layers of the tree (README, Architecture), enforced from the source.

Every import statement of every module counts, at module level or inside a function, and so
does a module named in a string passed to ``importlib.import_module`` or ``__import__``:

    sandbox.vocabulary   imports nothing of the project outside itself
    kernels, simulator   import sandbox.vocabulary only, and never each other
    sandbox.lab          imports the vocabulary, the executors and itself; never the public face
    public face          sandbox (its __init__), sandbox.api, sandbox.cli, sandbox.__main__
    scripts              the public face and the lab

and no two modules import each other, directly or through a circle.
"""

import ast
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("sandbox", "kernels", "simulator", "scripts")
PROJECT = ("sandbox", "kernels", "simulator")
FACE = ("sandbox", "sandbox.api", "sandbox.cli", "sandbox.__main__")


def layer(module):
    """The layer a project module belongs to."""
    if module == "sandbox.vocabulary" or module.startswith("sandbox.vocabulary."):
        return "vocabulary"
    if module == "sandbox.lab" or module.startswith("sandbox.lab."):
        return "lab"
    top = module.split(".")[0]
    if top in ("kernels", "simulator", "scripts"):
        return top
    return "face"


#: layer -> the layers it may import (itself included).
ALLOWED = {
    "vocabulary": {"vocabulary"},
    "kernels": {"vocabulary", "kernels"},
    "simulator": {"vocabulary", "simulator"},
    "lab": {"vocabulary", "kernels", "simulator", "lab"},
    "face": {"vocabulary", "kernels", "simulator", "lab", "face"},
    "scripts": {"lab", "face"},
}


def modules(root):
    """{dotted module name: path} of the project's packages under ``root``."""
    out = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(name, known):
    """The project module that importing ``name`` loads last: the longest known prefix (None if outside)."""
    if name.split(".")[0] not in PROJECT:
        return None
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return name


def imports(path, module, known):
    """[(line, imported project module)] of one file: every import statement, at any depth, and
    string arguments to ``importlib.import_module`` / ``__import__``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import name" loads pkg.name when that is a module, else pkg
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module")))):
            names = [node.args[0].value.partition(":")[0]]
        for name in names:
            target = _resolve(name, known)
            if target is not None and target != module:
                found.append((node.lineno, target))
    return found


def graph(root=ROOT):
    """{module: [(line, imported project module)]} for the tree under ``root``."""
    known = modules(root)
    return {m: imports(p, m, known) for m, p in known.items()}


def violations(root=ROOT):
    """Imports that cross the layers the wrong way, as "file:line: a imports b (layer → layer)"."""
    out = []
    for module, edges in graph(root).items():
        src = layer(module)
        for line, target in edges:
            dst = layer(target)
            if dst not in ALLOWED[src] or (src in ("kernels", "simulator") and target == "sandbox"):
                out.append(f"{module}:{line}: imports {target} ({src} → {dst})")
            elif src == "lab" and target in FACE:
                out.append(f"{module}:{line}: imports {target} (lab → the public face)")
    return out


def cycles(root=ROOT):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    edges = {m: sorted({t for _, t in e if t != m}) for m, e in graph(root).items()}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_layers_hold():
    assert violations() == []


def test_no_module_imports_itself_back():
    assert cycles() == []


def test_the_graph_sees_the_tree():
    """The checks look at what they should: the executors import the vocabulary, the face the lab."""
    g = graph()
    assert {"sandbox.vocabulary", "sandbox.lab", "kernels.registry", "simulator.table"} <= set(g)
    assert any(layer(t) == "vocabulary" for _, t in g["kernels.launch"])
    assert any(layer(t) == "vocabulary" for _, t in g["simulator.counts"])
    assert any(layer(t) == "lab" for _, t in g["sandbox.api"])


@pytest.fixture
def tree_copy(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


@pytest.mark.parametrize("planted, expected", [
    ("import kernels\n", "sandbox.vocabulary.schedule:1: imports kernels (vocabulary → kernels)"),
    ("def f():\n    from simulator import counts\n",
     "sandbox.vocabulary.schedule:2: imports simulator.counts (vocabulary → simulator)"),
    ("def f():\n    import importlib\n    return importlib.import_module('kernels.flash2')\n",
     "sandbox.vocabulary.schedule:3: imports kernels.flash2 (vocabulary → kernels)"),
    ("from sandbox.lab import bench\n", "sandbox.vocabulary.schedule:1: imports sandbox.lab.bench (vocabulary → lab)"),
])
def test_a_planted_import_in_the_vocabulary_is_caught(tree_copy, planted, expected):
    path = tree_copy / "sandbox" / "vocabulary" / "schedule.py"
    path.write_text(planted + path.read_text())
    assert expected in violations(tree_copy)


@pytest.mark.parametrize("file, planted, expected", [
    ("kernels/flash2.py", "import simulator.table\n", "kernels.flash2:1: imports simulator.table (kernels → simulator)"),
    ("simulator/counts.py", "def f():\n    from kernels import registry\n",
     "simulator.counts:2: imports kernels.registry (simulator → kernels)"),
    ("kernels/flash2.py", "from sandbox import Schedule\n", "kernels.flash2:1: imports sandbox (kernels → face)"),
    ("sandbox/lab/sweep.py", "import sandbox.api\n", "sandbox.lab.sweep:1: imports sandbox.api (lab → face)"),
])
def test_a_planted_import_across_the_executors_is_caught(tree_copy, file, planted, expected):
    path = tree_copy / file
    path.write_text(planted + path.read_text())
    assert expected in violations(tree_copy)


def test_a_planted_circle_is_caught(tree_copy):
    path = tree_copy / "sandbox" / "vocabulary" / "dtypes.py"
    path.write_text("def f():\n    from sandbox.vocabulary import schedule\n" + path.read_text())
    assert any({"sandbox.vocabulary.dtypes", "sandbox.vocabulary.schedule"} <= set(c) for c in cycles(tree_copy))
