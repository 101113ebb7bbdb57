"""Every notebook in notebooks/ runs top to bottom (jupytext percent file -> nbclient, a kernel on this Python),
against a small synthetic sweep, with SCALEKIT_NOTEBOOK_SMALL=1 so each takes seconds: a broken notebook fails CI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

from scalekit.analysis import synthetic_sweep  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
OTHERS = {"posttrain_testtime.py"}  # executed by its owner's tests
MINE = ("fit_approaches.py", "isoflop_extrapolation.py", "coverage_curves.py")
KERNEL = "scalekit-test-python"


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory) -> dict[str, str]:
    """A kernelspec for this interpreter (offline, no user-level install) and a small sweep for the notebooks."""
    root = tmp_path_factory.mktemp("nb")
    spec = root / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "scalekit test", "language": "python"}))
    sweep = synthetic_sweep(root / "sweep", budgets=(1e18, 3e18, 1e19, 3e19), noise=0.003, seed=2)
    return {"JUPYTER_PATH": str(root / "jupyter"), "SCALEKIT_SWEEP_DIR": str(sweep),
            "SCALEKIT_NOTEBOOK_SMALL": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def _notebooks() -> list[str]:
    return sorted(p.name for p in NOTEBOOKS.glob("*.py") if p.name not in OTHERS)


def test_the_three_starting_notebooks_exist() -> None:
    assert set(MINE) <= set(_notebooks())


@pytest.mark.parametrize("name", _notebooks())
def test_notebook_executes(name: str, notebook_env: dict[str, str], monkeypatch) -> None:
    for k, v in notebook_env.items():
        monkeypatch.setenv(k, v)
    nb = jupytext.read(NOTEBOOKS / name)
    assert nb.cells, f"{name} has no cells"
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()                                       # raises CellExecutionError on the first failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} drew no figure"
