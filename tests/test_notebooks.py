"""Every notebook in notebooks/ runs top to bottom, headless (nbclient, a fresh python3 kernel),
at the tiny sizes it selects under LOCALMAMBA_NOTEBOOK_SMOKE=1, so the notebooks cannot rot.
Also checked: the Colab badge points at the notebook itself, the first code cell installs the
package only on Colab, and no outputs are stored in the repository."""
from __future__ import annotations

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install 'localmamba-jax[test]'")
nbclient = pytest.importorskip("nbclient", reason="pip install 'localmamba-jax[test]'")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COLAB = "https://colab.research.google.com/github/{org}/localmamba-jax/blob/main/notebooks/{name}"

# What each notebook must show when it ran: text in its outputs and the number of figures.
EXPECTED = {
    "quickstart.ipynb": (["top-5:", "LocalVMamba with 10 classes"], 2),
    "finetune.ipynb": (["final test top-1", "restored step"], 2),
    # the export line, the reference's one-list-per-line print, the model built from the file;
    # figures: probability trajectories, the chosen-directions grid, the scan orders
    "search.ipynb": (["top-4 directions per layer at step 4", "\n['", "built from directions.json",
                      "layer 0: ['"], 3),
}


def test_the_notebooks_are_there():
  assert set(EXPECTED) <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_opens_in_colab(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  first_markdown = next(c for c in nb.cells if c.cell_type == "markdown").source
  assert COLAB.format(org="YOUR_ORG", name=path.name) in first_markdown
  assert "Open In Colab" in first_markdown
  setup = next(c for c in nb.cells if c.cell_type == "code").source
  assert 'if "google.colab" in sys.modules:' in setup and "!pip install" in setup
  assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, f"{path.name}: stored outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
  monkeypatch.setenv("LOCALMAMBA_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("LOCALMAMBA_NOTEBOOK_WORKDIR", str(tmp_path))
  # figures become image/png outputs (as in Jupyter), whatever MPLBACKEND the caller has
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  monkeypatch.delenv("LOCALMAMBA_CHECKPOINT", raising=False)
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(path.parent)}})
  client.execute()   # raises CellExecutionError naming the failing cell

  texts, figures = [], 0
  for cell in nb.cells:
    for output in cell.get("outputs", []):
      if output.output_type == "stream":
        texts.append(output.text)
      elif output.output_type in ("display_data", "execute_result"):
        figures += "image/png" in output.data
        texts.append(output.data.get("text/plain", ""))
  text = "".join(texts)
  phrases, min_figures = EXPECTED.get(path.name, ([], 0))
  for phrase in phrases:
    assert phrase in text, f"{path.name}: {phrase!r} not in the outputs"
  assert figures >= min_figures, f"{path.name}: {figures} figure(s), expected {min_figures}"
