"""The README's main job on the real Fashion-MNIST files, shrunk to a few steps."""

import os
import shutil

import pytest

from zkd import quickstart

SOURCE = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(SOURCE), reason=f"Debian's dataset-fashion-mnist is not installed ({SOURCE})")
def test_quickstart_prepares_offline_once(tmp_path, fashion_mnist_prepared, monkeypatch):
    """The main job's data step. Its training (quickstart.run_all and the table) runs in the notebook's
    part 3 (tests/test_notebook.py checks the table there), so it is not repeated here."""
    from zkd.data import prepare

    shared, _ = fashion_mnist_prepared  # prepare.prepare itself is tested in tests/test_data_prepare.py
    calls = []

    def prepare_by_copy(dataset, source, data_dir):  # what prepare.prepare would write, without redoing it
        calls.append((dataset, source, data_dir))
        shutil.copytree(shared, data_dir, dirs_exist_ok=True)

    data_dir = str(tmp_path / "tfds")
    monkeypatch.setattr(prepare, "prepare", prepare_by_copy)
    assert "prepared offline" in quickstart.ensure_fashion_mnist(data_dir, SOURCE)
    assert calls == [("fashion_mnist", SOURCE, data_dir)]
    assert "already prepared" in quickstart.ensure_fashion_mnist(data_dir, SOURCE)
    assert len(calls) == 1


def test_missing_data_says_what_to_install(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    from zkd.data import DataNotFoundError

    def offline(self, *args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        quickstart.ensure_fashion_mnist(str(tmp_path / "tfds"), str(tmp_path / "nowhere"))
