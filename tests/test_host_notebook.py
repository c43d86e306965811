"""The board notebook, run as a user runs it, on the ``sim`` backend (nbclient): it loads, infers
bit-exact, draws the pictures and times each task and a switch. It shares the cached top build
with ``tests/test_host_sim.py``."""

import re
from pathlib import Path

NOTEBOOK = Path(__file__).parents[1] / "host" / "notebooks" / "moevit_board.ipynb"


def test_the_board_notebook_runs_on_the_sim_backend():
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert 'BACKEND = "sim"' in notebook.cells[1].source
    NotebookClient(notebook, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parents[2])}}).execute()
    text = "\n".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for out in cell.outputs)
    print(text)
    assert "bit-exact with the golden model: True" in text
    switches = re.findall(r"^(\w+) +switch sent (\d+) bytes; (\d+) cycles", text, re.M)
    assert [(task, sent) for task, sent, _ in switches] == [("semseg", "0"), ("depth", "0")]
    assert all(int(cycles) > 0 for _, _, cycles in switches)
    images = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    assert len(images) == 1, "the input, truth and prediction picture"
