"""Fashion-MNIST prepared once per test session, shared by every xdist worker.

Preparing it (70,000 images through TFDS's builder, then a full verification) takes about a
minute of CPU; the preparation tests, the quickstart test and the notebook all read the same
prepared copy. The first worker to ask prepares it under a file lock in the session's shared
temporary root; the others wait, then read it.
"""

import fcntl
import os

import pytest

FASHION_SOURCE = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="session")
def fashion_mnist_prepared(tmp_path_factory):
    """(data_dir, summary of zkd.data.prepare.prepare) of the real Fashion-MNIST; skips without the files."""
    from zkd.data import prepare, sources

    if not all(os.path.isfile(os.path.join(FASHION_SOURCE, f)) for f in sources.FASHION_MNIST_FILES):
        pytest.skip(f"{FASHION_SOURCE} lacks the IDX files: apt-get install dataset-fashion-mnist (CI installs it)")
    root = tmp_path_factory.getbasetemp().parent  # shared by the workers of one xdist session
    data_dir = root / "fashion_mnist_tfds"
    done = root / "fashion_mnist_tfds.summary"
    with open(root / "fashion_mnist_tfds.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            import json

            summary = prepare.prepare("fashion_mnist", FASHION_SOURCE, data_dir)
            done.write_text(json.dumps(summary))
    import json

    return str(data_dir), json.loads(done.read_text())
