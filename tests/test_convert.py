"""PyTorch checkpoints -> Flax variables -> orbax directories: official teacher files, plain
and DataParallel state dicts, the command, and the errors for bad files."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import zkd.checkpoint
import zkd.convert
import zkd.models
from model_equivalence import randomize_batchnorm
from torch_reference.resnets import cifar_resnet, four_stage_resnet
from torch_reference.wrn import wrn
from zkd.convert import CheckpointFileError, CheckpointMismatchError, from_torch_checkpoint

IMAGES = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def teacher():
    """A resnet8 'teacher' with random BN statistics and its eval-mode logits on IMAGES."""
    torch.manual_seed(0)
    model = cifar_resnet("resnet8", 100)
    randomize_batchnorm(model)
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())).numpy()
    return model, logits


@pytest.fixture(scope="module")
def official_file(teacher, tmp_path_factory):
    """The layout of mdistiller's cifar_teachers files: a dict with the state dict under "model"."""
    path = tmp_path_factory.mktemp("teachers") / "ckpt_epoch_240.pth"
    model, _ = teacher
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.save({"epoch": 240, "model": model.state_dict(), "best_acc": torch.tensor(75.3),
                "optimizer": optimizer.state_dict()}, path)
    return path


def flax_logits(variables, name="resnet8", num_classes=100):
    model = zkd.models.build(name, num_classes=num_classes)
    return np.asarray(model.apply(variables, IMAGES, train=False))


def assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, atol=1e-4 * np.max(np.abs(expected)))


def test_importing_zkd_does_not_import_torch():
    code = ("import sys, zkd, zkd.models, zkd.convert, zkd.checkpoint\n"
            "zkd.models.available('cifar'); zkd.models.available('imagenet')\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr


def test_official_teacher_file(teacher, official_file):
    variables = from_torch_checkpoint(official_file, "resnet8", 100)
    assert set(variables) == {"params", "batch_stats"}
    assert_close(flax_logits(variables), teacher[1])
    # The running statistics carried over, not re-initialised.
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"],
                                  teacher[0].bn1.running_var.numpy())


def test_plain_and_data_parallel_state_dicts(teacher, tmp_path):
    model, logits = teacher
    state_dict = model.state_dict()
    assert_close(flax_logits(from_torch_checkpoint(state_dict, "resnet8", 100)), logits)
    wrapped = {f"module.{k}": v for k, v in state_dict.items()}
    torch.save(wrapped, tmp_path / "dp.pth")
    assert_close(flax_logits(from_torch_checkpoint(str(tmp_path / "dp.pth"), "resnet8", 100)), logits)


def test_torchvision_layout_state_dict():
    """A plain torchvision-style state dict (ImageNet ResNet18, 1000 classes) converts whole."""
    torch.manual_seed(0)
    state_dict = four_stage_resnet("ResNet18", 1000, imagenet=True).state_dict()
    variables = from_torch_checkpoint(state_dict, "ResNet18", 1000, zoo="imagenet")
    assert zkd.models.count_params(variables["params"]) == 11_689_512
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                  state_dict["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["layer2"]["0"]["downsample"]["1"]["mean"],
                                  state_dict["layer2.0.downsample.1.running_mean"].numpy())


def test_wrong_architecture_names_the_keys(official_file):
    with pytest.raises(CheckpointMismatchError) as err:
        from_torch_checkpoint(official_file, "resnet14", 100)  # resnet8 has one block per stage
    message = str(err.value)
    assert str(official_file) in message and "'resnet14'" in message
    assert "missing" in message and "layer1.1.conv1.weight" in message
    assert "unexpected" not in message

    torch.manual_seed(0)
    with pytest.raises(CheckpointMismatchError) as err:
        from_torch_checkpoint(wrn("wrn_16_1", 100).state_dict(), "resnet8", 100)
    message = str(err.value)
    assert "layer1.0.conv1.weight" in message  # missing
    assert "block1.layer.0.conv1.weight" in message  # unexpected


def test_wrong_num_classes_is_misshaped(official_file):
    with pytest.raises(CheckpointMismatchError, match=r"mis-shaped 2: ") as err:
        from_torch_checkpoint(official_file, "resnet8", 10)
    assert "fc.weight: checkpoint (100, 64) vs model (10, 64)" in str(err.value)
    assert "fc.bias: checkpoint (100,) vs model (10,)" in str(err.value)
    assert "missing" not in str(err.value) and "unexpected" not in str(err.value)


def test_missing_key(teacher):
    state_dict = dict(teacher[0].state_dict())
    del state_dict["layer2.0.bn1.running_var"]
    with pytest.raises(CheckpointMismatchError, match=r"missing 1: layer2\.0\.bn1\.running_var"):
        from_torch_checkpoint(state_dict, "resnet8", 100)


def test_truncated_and_missing_files(official_file, tmp_path):
    truncated = tmp_path / "truncated.pth"
    data = official_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFileError, match="truncated.pth"):
        from_torch_checkpoint(truncated, "resnet8", 100)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFileError, match="garbage.pth"):
        from_torch_checkpoint(garbage, "resnet8", 100)
    with pytest.raises(CheckpointFileError, match="absent.pth"):
        from_torch_checkpoint(tmp_path / "absent.pth", "resnet8", 100)


def test_file_without_state_dict(tmp_path):
    torch.save({"epoch": 3, "best_acc": 1.0}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointFileError, match=r"odd\.pth.*top-level keys: epoch, best_acc"):
        from_torch_checkpoint(tmp_path / "odd.pth", "resnet8", 100)


def test_variables_directory_roundtrip(teacher, tmp_path):
    variables = from_torch_checkpoint(teacher[0].state_dict(), "resnet8", 100)
    metadata = {"model": "resnet8", "zoo": "cifar", "num_classes": 100}
    zkd.checkpoint.save_variables(tmp_path / "t", variables, metadata)
    restored, restored_metadata = zkd.checkpoint.restore_variables(tmp_path / "t")
    assert restored_metadata == metadata
    flat = dict(zip(map(str, _paths(variables)), _leaves(variables)))
    assert flat.keys() == dict(zip(map(str, _paths(restored)), _leaves(restored))).keys()
    for (path, a), b in zip(flat.items(), _leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=path)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        zkd.checkpoint.save_variables(tmp_path / "t", variables, metadata)
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        os.remove(tmp_path / "t" / "metadata.json")
        zkd.checkpoint.restore_variables(tmp_path / "t")


def _paths(tree):
    import jax

    return [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_command_writes_a_teacher_directory(teacher, official_file, tmp_path, capsys):
    out = tmp_path / "resnet8_teacher"
    argv = ["--checkpoint", str(official_file), "--model", "resnet8", "--num_classes", "100",
            "--output", str(out)]
    assert zkd.convert.main(argv) == 0
    assert "83,892 parameters" in capsys.readouterr().out
    variables, metadata = zkd.checkpoint.restore_variables(out)
    assert metadata["model"] == "resnet8" and metadata["num_classes"] == 100
    assert metadata["zoo"] == "cifar"
    assert_close(flax_logits(variables), teacher[1])
    with pytest.raises(SystemExit):  # never overwrites
        zkd.convert.main(argv)
    assert "exists already" in capsys.readouterr().err
    # A mismatching architecture: exit status 1, the keys named, nothing written.
    bad = tmp_path / "bad"
    assert zkd.convert.main(argv[:3] + ["resnet20", "--num_classes", "100", "--output", str(bad)]) == 1
    assert "layer1.1.conv1.weight" in capsys.readouterr().err
    assert not bad.exists()
