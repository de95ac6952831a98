"""Sphinx configuration: ``make docs`` builds the API reference, the README, the notebooks (with their stored
outputs, not executed) and the benchmark results into docs/_build/html, and fails on any warning."""

import epdo

project = "epdo"
release = epdo.__version__
root_doc = "docs/index"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_nb"]
include_patterns = ["docs/**", "README.md", "notebooks/*.ipynb", "benchmarks/*.md", "benchmarks/*.png"]
exclude_patterns = ["docs/_build/**"]
nb_execution_mode = "off"  # notebooks are committed with their outputs (make notebooks)
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = True  # every cross-reference must resolve
nitpick_ignore_regex = [
    # other projects' objects (no network for intersphinx): torch, escnn, numpy, scipy and the standard library
    (r"py:.*", r"(torch|escnn|nn|numpy|np|scipy|argparse|ctypes|os|pathlib|Path|typing|collections)(\..*)?"),
    (
        r"py:.*",
        r"(Tensor|Module|FieldType|GeometricTensor|Representation|GroupElement|GSpace2D|Group|"
        r"EquivariantModule|SequentialModule|NotebookNode|Generator|Optimizer|CDLL|Namespace|ndarray|spmatrix|dtype|device)",
    ),
    (r"py:class", r"(optional|callable|.*Matrices|.*BasisFn)"),
]
html_theme = "furo"
html_title = f"epdo {release}"
