"""experiments/prototyping.ipynb runs top to bottom (nbclient), the tiny Fashion-MNIST part included."""

import os

import pytest

SOURCE = "/usr/share/datasets/fashion-mnist"
NOTEBOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "prototyping.ipynb")


@pytest.mark.skipif(not os.path.isdir(SOURCE), reason=f"Debian's dataset-fashion-mnist is not installed ({SOURCE})")
def test_prototyping_notebook_executes(tmp_path, fashion_mnist_prepared, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra")
    nbclient = pytest.importorskip("nbclient", reason="nbclient (and ipykernel) are in the test extra")
    pytest.importorskip("matplotlib", reason="matplotlib is in the test extra")
    monkeypatch.setenv("TFDS_DATA_DIR", fashion_mnist_prepared[0])  # the notebook reads an existing TFDS copy
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env_dir = os.path.dirname(os.path.dirname(NOTEBOOK))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": env_dir}})
    client.execute()
    outputs = {i: "".join(o.get("text", "") for o in c.get("outputs", [])) for i, c in enumerate(nb.cells)
               if c.cell_type == "code"}
    text = "\n".join(outputs.values())
    assert "KD 0.1749" in text and "KD+LS 0.0995" in text and "KD+LS 0.0" in text
    # Part 3 is the README's main job (zkd.quickstart.run_all + format_table) on a few steps.
    table = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "resnet8 |" in line]
    assert [r[0].strip() for r in table] == ["teacher", "KD", "KD+LS"], text[-3000:]
    for r in table:
        assert 0.0 <= float(r[3]) <= 100.0 and r[6].strip() == "1"  # best top-1, epochs
    assert table[0][5].strip() == "" and all(0.0 <= float(r[5]) <= 100.0 for r in table[1:])  # agreement
    # Section 4: a user's CNN teacher and MLP student on arrays, through the Python API.
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in text.splitlines()
            if line.startswith("| ") and "(my_" in line}
    assert set(rows) == {"teacher (my_cnn, CE)", "KD (my_mlp)", "KD+LS (my_mlp)"}, text[-2000:]
    assert rows["teacher (my_cnn, CE)"] > 50 and min(rows.values()) > 10  # 10 classes: chance is 10%
    assert any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", []))
