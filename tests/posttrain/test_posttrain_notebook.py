"""The post-training notebook executes top to bottom on its miniature study (jupytext -> nbclient) and draws."""

import json
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "posttrain_testtime.py"
KERNEL = "scalekit-posttrain-test"


def test_notebook_executes(tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    spec = tmp_path / "jupyter" / "kernels" / KERNEL  # a kernel on this interpreter, no user-level install
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "scalekit posttrain test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("SCALEKIT_POSTTRAIN_SWEEP", raising=False)  # the miniature study, not a full one
    flags = [f for f in __import__("os").environ.get("XLA_FLAGS", "").split()
             if "xla_force_host_platform_device_count" not in f]
    monkeypatch.setenv("XLA_FLAGS", " ".join(flags))  # one device: tiny models run faster
    nb = jupytext.read(NOTEBOOK)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "budget >=" in text  # the frontier was described
    assert [o for o in outputs if "image/png" in o.get("data", {})], "the notebook drew no figure"
