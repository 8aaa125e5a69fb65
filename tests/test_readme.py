"""The README's code runs as written (issue 13).

Every ```python block is run in a fresh interpreter, in a scratch folder holding
the ``photo.png`` the tour encodes (a generated picture); every ``varicodec
COMMAND`` in the ```bash blocks must be a subcommand the parser knows.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from varicodec.demo import synthetic_image

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), re.S | re.M)


def test_readme_has_a_python_tour():
    assert blocks("python"), "no ```python block in the README"


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks_run(index, tmp_path):
    from PIL import Image

    Image.fromarray(synthetic_image(320, 240)).save(tmp_path / "photo.png")
    code = "import torch; torch.set_num_threads(2)\n" + blocks("python")[index]
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, f"README python block {index} failed:\n{r.stderr[-3000:]}"


def test_bash_blocks_name_real_subcommands():
    from varicodec.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    named = {m.group(1) for b in blocks("bash")
             for m in re.finditer(r"(?:^|[\s/])varicodec (\w+)", b, re.M)}
    assert named, "no varicodec commands found in the README"
    assert named <= set(sub.choices), named - set(sub.choices)
