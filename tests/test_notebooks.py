import re
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
sys.path.insert(0, str(NOTEBOOK_DIR))
import build_notebooks  # noqa: E402


def printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.parametrize("name", build_notebooks.NOTEBOOKS)
def test_committed_notebooks_hold_the_builders_cells_with_their_outputs(name):
    committed = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    cells = [(c.cell_type == "markdown" and "md" or "code", c.source) for c in committed.cells]
    assert cells == build_notebooks.NOTEBOOKS[name], "run `make notebooks` after editing notebooks/build_notebooks.py"
    assert all(c.outputs for c in committed.cells if c.cell_type == "code"), "committed without outputs"


@pytest.mark.parametrize("name", build_notebooks.NOTEBOOKS)
def test_notebooks_execute_from_scratch(name, tmp_path):
    nb = build_notebooks.execute(build_notebooks.notebook(build_notebooks.NOTEBOOKS[name]), tmp_path)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    text = printed(nb)
    if name == "quickstart.ipynb":  # invariant to quarter turns, and the logits differ between images
        changes = [float(v) for v in re.findall(r"deg: max logit change ([\d.e+-]+)", text)]
        spread = float(re.search(r"spread of the logits across images: ([\d.e+-]+)", text).group(1))
        assert len(changes) == 3 and max(changes) < 1e-3 < spread, text
    elif name == "equivariance.ipynb":  # exact on the grid, approximate off the grid
        grid = [float(v) for v in re.findall(r"grid ([\d.e+-]+) ", text)]
        assert len(grid) == 6 and max(grid) < 1e-4, text
    elif name == "escnn_network.ipynb":  # three networks of one shape, invariant, exported to their eval outputs
        shapes = re.findall(r"shapes (\[.*?\]), logits (\(.*?\))", text)
        changes = [float(v) for v in re.findall(r"change at 90 deg ([\d.e+-]+)", text)]
        spreads = [float(v) for v in re.findall(r"spread across images ([\d.e+-]+)", text)]
        exported = [float(v) for v in re.findall(r"export difference ([\d.e+-]+)", text)]
        assert len(shapes) == 3 and len(set(shapes)) == 1 and shapes[0][1] == "(16, 10)", text
        assert len(changes) == 3 and max(changes) < 1e-4 and min(spreads) > 1e-3, text
        assert len(exported) == 3 and max(exported) < 1e-4 and text.count("modules from ['torch']") == 3, text
    else:  # invariant networks at 90 degrees (with features that differ between images), layers exact there only
        changes = [float(v) for v in re.findall(r"change at 90 deg ([\d.e+-]+)", text)]
        spreads = [float(v) for v in re.findall(r"spread across images ([\d.e+-]+)", text)]
        at_90 = [float(v) for v in re.findall(r": 90 deg ([\d.e+-]+),", text)]
        largest = [float(v) for v in re.findall(r"largest in 0-90 deg ([\d.e+-]+)", text)]
        assert len(changes) == 2 and max(changes) < 1e-4 and min(spreads) > 1e-3, text
        assert len(at_90) == 4 and max(at_90) < 1e-4 and min(largest) > 1e-4, text
