"""The transformer students through the normal engine (docs/paper.md §8): their configs, the
teacher's resize, the distillation head, the student's view, and a 2-epoch run on synthetic data."""

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.test_step import _load_config
from tests.train_fixtures import mock_cifar100, save_random_teacher, synthetic_split
from zkd import data, engine, losses, methods, recipes, step, train, validate
from zkd.errors import ConfigError
from zkd.data import pipeline


def test_vit_configs_carry_the_release_recipe():
    c = _load_config("cifar100_vit.py", "student=deit_tiny,ls=1")
    assert (c.student.zoo, c.student.options.img_size, c.student_input_size, c.teacher_input_size) == ("vit", 224, 224, 32)
    assert (c.teacher.name, c.augmentation, c.num_epochs, c.batch_size, c.eval_batch_size) == (
        "resnet56", "random_resized_crop+rand-m9-mstd0.5-inc1+re0.25", 300, 128, 200)
    o = c.optimizer
    assert (o.name, o.schedule, o.learning_rate, o.weight_decay, o.warmup_epochs, o.warmup_factor, o.min_lr) == (
        "adamw", "cosine", 5e-4, 0.05, 20, 1e-3, 5e-6)
    assert (c.loss.ce_weight, c.loss.temperature, c.loss.kd_weight, c.loss.kd_logits) == (0.5, 3, 10, "distill_logits")
    assert c.paper_top1.logit_stand == 78.55
    c = _load_config("cifar100_vit.py", "student=t2t_vit_7,ls=0")
    assert (c.loss.temperature, c.loss.kd_weight, c.loss.kd_logits, c.logit_stand) == (3, 1, "", False)
    c = _load_config("cifar100_vit.py", "student=pvt_tiny,method=ce")
    assert c.method == "ce" and c.paper_top1.baseline == 69.22
    c = _load_config("cifar100_vit.py", "student=pit_tiny,runlocal=1")
    assert (c.student_input_size, c.student.options.img_size, c.loss.temperature, c.loss.kd_weight) == (64, 64, 2, 9)


@pytest.mark.parametrize("size_in", [64, 224])
def test_the_teachers_resize_is_torchs_bilinear_interpolate(size_in):
    x = np.random.default_rng(0).standard_normal((2, size_in, size_in, 3)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.tensor(x).permute(0, 3, 1, 2), size=(32, 32), mode="bilinear",
                                           align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(step.resize_images(jnp.asarray(x), 32), want, rtol=1e-5, atol=1e-5)
    assert step.resize_images(jnp.asarray(x), size_in) is not None and step.resize_images(x, 0) is x


def test_kd_distils_into_the_sown_head_and_ce_stays_on_the_output():
    rng = np.random.default_rng(1)
    out, distill, teacher = (jnp.asarray(rng.standard_normal((4, 10)), jnp.float32) for _ in range(3))
    labels = jnp.arange(4)
    hp = methods.KD.HParams(ce_weight=0.5, kd_weight=10.0, temperature=3.0)
    s = step.StepSettings("kd", 1, lambda i: 0.1, True, hp, kd_logits="distill_logits")
    terms = step.loss_terms(s, None, out, teacher, labels, 1.0, kd_student_logits=distill)
    np.testing.assert_allclose(terms["kd"], 10.0 * losses.kd_loss(distill, teacher, 3.0, True), rtol=1e-6)
    np.testing.assert_allclose(terms["ce"], 0.5 * losses.cross_entropy(out, labels), rtol=1e-6)
    with pytest.raises(ValueError, match="kd_logits"):
        step.StepSettings("dkd", 1, lambda i: 0.1, kd_logits="distill_logits")


def test_the_students_view_is_upsampled_and_resumable():
    info = data.get_info("cifar100")
    images, labels = synthetic_split(dataclasses.replace(info, train_size=64, test_size=64), "train")
    kwargs = dict(global_batch_size=8, seed=3, image_size=48, augmentation="random_resized_crop")
    first = [b for _, b in zip(range(3), pipeline.in_memory_train_batches(info, images, labels, **kwargs))]
    assert first[0]["image"].shape == (8, 48, 48, 3) and first[0]["image"].dtype == np.float32
    resumed = next(pipeline.in_memory_train_batches(info, images, labels, start_step=2, **kwargs))
    np.testing.assert_array_equal(resumed["image"], first[2]["image"])
    halves = [next(pipeline.in_memory_train_batches(info, images, labels, process_index=p, process_count=2, **kwargs))
              for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), first[0]["image"])
    plain = next(pipeline.in_memory_train_batches(info, images, labels, global_batch_size=8, seed=3, image_size=48))
    assert plain["image"].shape == (8, 48, 48, 3)
    with pytest.raises(ValueError, match="augmentation"):
        pipeline.in_memory_train_batches(info, images, labels, global_batch_size=8, seed=3, augmentation="rand")
    with mock_cifar100(40):
        evals = list(pipeline.eval_batches("cifar100", data_dir=None, global_batch_size=32, image_size=48))
    assert [b["image"].shape for b in evals] == [(32, 48, 48, 3)] * 2 and sum(b["mask"].sum() for b in evals) == 40
    assert not evals[1]["image"][8:].any()  # padding rows


def test_input_size_fields_refuse_what_they_cannot_serve():
    c = recipes.cifar100_vit("pit_tiny", True)
    c.student_input_size = 96
    with pytest.raises(ConfigError, match="img_size"):
        validate.validate_config(c)
    c = recipes.cifar100_vit("pit_tiny", True)
    c.device_resident_data = True
    with pytest.raises(ConfigError, match="device-resident"):
        validate.validate_config(c)


def test_a_transformer_student_trains_two_epochs_from_a_cnn_teacher(tmp_path):
    """DeiT-Tiny at 64x64 distilled (KD+LS into its distillation head) from a ResNet teacher that
    sees 32x32, through zkd.train.train_and_evaluate on synthetic CIFAR-100."""
    teacher_dir = save_random_teacher(str(tmp_path / "teacher"))
    c = recipes.cifar100_vit("deit_tiny", True, teacher_checkpoint=teacher_dir, teacher="resnet8")
    recipes.shrink_vit_for_local_run(c)
    c.num_epochs, c.steps_per_epoch, c.batch_size, c.eval_batch_size, c.max_eval_batches = 2, 2, 16, 32, -1
    c.student.options.depth = 2  # DeiT's own layers, 2 of its 12: compiling 12 takes a minute on 2 cores
    c.progress_bar = False
    recipes.finalize(c)
    workdir = str(tmp_path / "run")
    with mock_cifar100():
        summary = train.train_and_evaluate(c, workdir)
    assert summary["epochs"] == 2 and summary["paper_top1"] == 78.55 and np.isfinite(summary["last_top1"])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    kinds = [r["kind"] for r in records]
    assert kinds == ["teacher", "train", "train", "eval", "train", "train", "eval"]
    train_records = [r for r in records if r["kind"] == "train"]
    assert all(np.isfinite(r["kd"]) and r["kd"] > 0 and np.isfinite(r["loss"]) for r in train_records)
    # epoch 0 of the warm-up at 1e-3 x 5e-4, epoch 1 (of 1 warm-up epoch, 2 in all) on the cosine
    want = [5e-7, 5e-7, 2.525e-4, 2.525e-4]
    np.testing.assert_allclose([r["learning_rate"] for r in train_records], want, rtol=1e-5)
    assert all(r["count"] == 64 for r in records if r["kind"] in ("teacher", "eval"))
