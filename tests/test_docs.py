"""The documentation's promises: every public name documented, the README's example runs."""

import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch
from sphinx.pycode import ModuleAnalyzer

ROOT = Path(__file__).parent.parent
PUBLIC = ["epdo.nn", "epdo.kernels", "epdo.diffops", "epdo.representations", "epdo.models", "epdo.training",
          "epdo.checkpoint", "epdo.records", "epdo.data", "epdo.equivariance", "epdo.plots"]  # fmt: skip


def public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
        ]
    return names


def attribute_docs(obj) -> set:
    module = inspect.getmodule(obj) if not inspect.ismodule(obj) else obj
    return {name for (_, name) in ModuleAnalyzer.for_module(module.__name__).find_attr_docs()}


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_is_documented(name):
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no module docstring"
    missing = []
    for public in public_names(module):
        obj = getattr(module, public)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not inspect.getdoc(obj):
                missing.append(public)
            if inspect.isclass(obj):
                for attribute, member in vars(obj).items():
                    if attribute.startswith("_") or not (
                        inspect.isfunction(member) or isinstance(member, (property, classmethod))
                    ):
                        continue
                    if not inspect.getdoc(member if not isinstance(member, classmethod) else member.__func__):
                        missing.append(f"{public}.{attribute}")
        elif public not in set().union(
            *(attribute_docs(importlib.import_module(m)) for m in _defining_modules(module, public))
        ):
            missing.append(public)
    assert not missing, f"{name}: undocumented public names {missing}"


def _defining_modules(package, name):
    """The modules where a constant exported by ``package`` may be defined (the package and its submodules)."""
    modules = [package.__name__]
    path = getattr(package, "__path__", None)
    if path:
        modules += [f"{package.__name__}.{p.stem}" for p in Path(path[0]).glob("*.py") if p.stem != "__init__"]
    return [m for m in modules if hasattr(importlib.import_module(m), name)]


def test_the_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)


def test_the_readme_deployment_example_runs(tmp_path, monkeypatch):
    from epdo.train import main as train_main

    text = (ROOT / "README.md").read_text()
    example = re.findall(r"```python\n(.*?)```", text, re.S)[1]
    assert "export()" in example and len(example.strip().splitlines()) == 3
    tiny = ["--dataset", "synthetic", "--group-order", "4", "--widths", "2,2,2,2,2,2", "--limit-train", "32",
            "--limit-test", "16", "--batch-size", "16", "--epochs", "1", "--no-progress", "--threads", "1"]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert train_main([*tiny, "--out", "runs/latest"]) == 0
    namespace: dict = {}
    exec(compile("import torch, epdo.checkpoint\n" + example, "README.md", "exec"), namespace)
    assert isinstance(namespace["program"], torch.export.ExportedProgram)
