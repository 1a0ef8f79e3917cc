"""The README's code blocks run as written.

"Using the pieces in your own PyG model": loads ZINC (the offline mirror, via ``GTPE_MIRROR`` set by
``conftest.py``) with RWSE and LapPE precomputed, builds a model from ``gtpe.nn`` pieces and takes
one training step, printing the loss.
"""

import math
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def code_block(text: str, heading: str) -> str:
    """The first ```python block of the section ``heading`` (up to the next ``## `` heading)."""
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    section = text[start : end if end >= 0 else len(text)]
    m = re.search(r"^```python\n(.*?)^```$", section, re.S | re.M)
    if m is None:
        raise AssertionError(f"no ```python block under {heading!r}")
    return m.group(1)


def test_code_block_extraction():
    text = "# T\n## A\n```python\na = 1\n```\n## B\nx\n```python\nb = 2\n```\n"
    assert code_block(text, "## A") == "a = 1\n"
    assert code_block(text, "## B") == "b = 2\n"
    with pytest.raises(AssertionError, match="no ```python block"):
        code_block("## C\ntext only\n## D\n```python\nc = 3\n```\n", "## C")


def test_own_pyg_model_snippet_trains_one_step(capsys):
    code = code_block(README.read_text(encoding="utf-8"), "## Using the pieces in your own PyG model")
    torch.manual_seed(0)
    namespace: dict = {"__name__": "readme_snippet"}
    exec(compile(code, "README.md:own-PyG-model", "exec"), namespace)
    out = capsys.readouterr().out
    m = re.search(r"train loss (\S+)", out)
    assert m is not None, f"the snippet must print the training loss, printed {out!r}"
    assert math.isfinite(float(m.group(1)))
    model = namespace["model"]
    assert any(p.grad is not None for p in model.parameters())  # a real backward + step ran
