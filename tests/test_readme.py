"""The README's Python examples run as written, in order, in one namespace (under the CUDA simulator in CI)."""

import pathlib
import re


def test_readme_examples_run():
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 2  # the Use example and the masks example
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i}", "exec"), namespace)
