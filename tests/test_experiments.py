"""experiments/: the toy case, logit statistics, the reproduction runner and the Fashion-MNIST study,
end to end on synthetic data with tiny models (numbers checked against direct computations)."""

import importlib.util
import json
import os
import sys
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest

from tests.train_fixtures import N_MOCK, mock_cifar100, mock_dataset, save_random_teacher, synthetic_split
from zkd import data, metrics_io, models, sweep

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", os.path.join(EXPERIMENTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


toy_case = _load("toy_case")
logit_stats = _load("logit_stats")


# ----------------------------------------------------------------------------- toy case


def test_toy_case_prints_the_papers_numbers_and_draws(tmp_path, capsys):
    out = str(tmp_path / "toy.png")
    numbers = toy_case.main(["--out", out])
    assert round(numbers["S1"]["kd"], 4) == 0.1749 and round(numbers["S2"]["kd"], 4) == 0.3457
    assert round(numbers["S1"]["kd_ls"], 4) == 0.0995 and abs(numbers["S2"]["kd_ls"]) < 1e-6
    printed = capsys.readouterr().out
    for text in ("0.1749", "0.3457", "0.0995", "0.0000"):
        assert text in printed
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- logit statistics


def test_class_mean_logits_and_analysis_by_hand():
    logits = np.array([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 2.0, 4.0]], np.float32)
    labels = np.array([0, 0, 1])  # the last example is misclassified (argmax 2)
    m = logit_stats.class_mean_logits(logits, labels, 3)
    np.testing.assert_allclose(m[0], [2.0, 0.0, 0.0])
    np.testing.assert_allclose(m[1], [0.0, 2.0, 4.0])
    assert np.all(np.isnan(m[2]))  # no example of class 2
    student = logits / 2.0
    result = logit_stats.analyse({"teacher": logits, "s": student}, labels, 3)
    assert result["students"]["s"]["agreement"] == 100.0
    assert result["models"]["teacher"]["top1"] == pytest.approx(100.0 * 2 / 3)
    # raw: the student is the teacher halved, so the difference is half the teacher's class means
    assert result["students"]["s"]["raw"]["class_mean_diff_max_abs"] == pytest.approx(2.0)
    # standardized: a scaled copy standardizes to the same logits
    assert result["students"]["s"]["standardized"]["class_mean_diff_max_abs"] < 1e-5
    std = result["models"]["teacher"]["raw"]["logit_std"]["mean"]
    assert std == pytest.approx(np.mean(np.std(logits, axis=1, ddof=1)), rel=1e-6)
    assert result["models"]["s"]["standardized"]["logit_std"]["mean"] == pytest.approx(1.0, abs=1e-5)


def test_logit_stats_end_to_end_on_converted_checkpoints(tmp_path, capsys):
    teacher = save_random_teacher(str(tmp_path / "teacher"), seed=1)
    student = save_random_teacher(str(tmp_path / "student"), seed=2)
    out = str(tmp_path / "stats")
    with mock_cifar100():
        result = logit_stats.main(["--teacher", teacher, "--student", f"random={student}", "--dataset", "cifar100",
                                   "--out_dir", out, "--batch_size", "24"])
        images, labels = synthetic_split(data.DATASETS["cifar100"], "test")
    assert result["num_examples"] == N_MOCK
    with open(os.path.join(out, "logit_stats.json")) as f:
        assert json.load(f)["students"]["random"]["agreement"] == result["students"]["random"]["agreement"]
    for name in ("logit_distributions.png", "class_mean_logit_diff.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000
    # the numbers are those of the two models applied directly to the normalized test images
    info = data.DATASETS["cifar100"]
    x = (images.astype(np.float32) / 255.0 - np.asarray(info.mean, np.float32)) / np.asarray(info.std, np.float32)
    model = models.build("resnet8", 100)
    direct = {}
    for label, path in (("teacher", teacher), ("random", student)):
        variables, _ = __import__("zkd.checkpoint", fromlist=["x"]).restore_variables(path)
        direct[label] = np.asarray(model.apply(variables, jnp.asarray(x), train=False))
    agreement = 100.0 * np.mean(direct["teacher"].argmax(1) == direct["random"].argmax(1))
    assert result["students"]["random"]["agreement"] == pytest.approx(agreement)
    assert result["models"]["teacher"]["top1"] == pytest.approx(100.0 * np.mean(direct["teacher"].argmax(1) == labels))
    assert result["models"]["teacher"]["raw"]["logit_std"]["mean"] == pytest.approx(
        np.mean(np.std(direct["teacher"], axis=1, ddof=1)), rel=1e-4)
    assert "| random |" in capsys.readouterr().out


def test_logit_stats_needs_an_architecture_for_a_bare_file(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"")
    with pytest.raises(logit_stats.ModelSpecError, match="name its architecture"):
        logit_stats.architecture(str(path))
    assert logit_stats.architecture(str(path), "resnet56") == ("resnet56", "cifar")
    assert logit_stats.parse_spec("KD+LS=/a/b@resnet8") == ("KD+LS", "/a/b", "resnet8")
    assert logit_stats.parse_spec("/a/run/") == ("run", "/a/run/", "")


# ----------------------------------------------------------------------------- reproduction runner

reproduce = _load("reproduce")
TINY = ("student.name=resnet8,teacher.name=resnet8,steps_per_epoch=2,batch_size=16,eval_batch_size=24,"
        "max_eval_batches=-1,num_epochs={epochs}")


def test_row_selection_and_teacher_layouts(tmp_path):
    rows = reproduce.select_rows("kd:R32x4:R8x4,table3,kd:R32x4:R8x4")
    table3 = [(m, t, s) for t, s in (("ResNet34", "ResNet18"), ("ResNet50", "MobileNetV1"))
              for m in ("kd", "dkd", "mlkd", "ctkd")]
    assert [(r.method, r.teacher, r.student) for r in rows] == [("kd", "resnet32x4", "resnet8x4")] + table3
    assert all(r.dataset == "imagenet2012" and r.paper for r in rows[1:])  # Table 3: 4 methods x 2 pairs
    name, config = reproduce.make_config(rows[2], True, 0, "t.pth", "")
    assert name == "imagenet2012/dkd_ls/ResNet34-ResNet18/seed0"
    assert reproduce.setting(config) == "T 2, α 9, β 4.5, CE 1"
    assert len(reproduce.select_rows("*:resnet32x4:resnet8x4")) == 4
    assert len(reproduce.select_rows("table1")) == 7 * 4 and len(reproduce.select_rows("table2")) == 7 * 4
    # the paper's numbering: Table 1 = different architectures, Table 2 = the same family
    assert ("resnet32x4", "ShuffleV2") in {(r.teacher, r.student) for r in reproduce.select_rows("table1")}
    assert ("resnet32x4", "resnet8x4") in {(r.teacher, r.student) for r in reproduce.select_rows("table2")}
    with pytest.raises(reproduce.RowError, match="not in the paper"):
        reproduce.select_rows("kd:resnet8:resnet8")
    os.makedirs(tmp_path / "resnet56_vanilla")
    (tmp_path / "resnet56_vanilla" / "ckpt_epoch_240.pth").write_bytes(b"x")
    (tmp_path / "resnet34-b627a593.pth").write_bytes(b"x")
    assert reproduce.find_teacher(str(tmp_path), "resnet56", "cifar100")[0].endswith(
        "resnet56_vanilla/ckpt_epoch_240.pth")
    assert reproduce.find_teacher(str(tmp_path), "ResNet34", "imagenet2012")[0].endswith("resnet34-b627a593.pth")
    assert reproduce.find_teacher(str(tmp_path), "vgg13", "cifar100")[0] is None
    with pytest.raises(FileNotFoundError, match="vgg13"):
        reproduce.main(["--rows", "kd:VGG13:VGG8", "--teachers_dir", str(tmp_path), "--list"])
    name, config = reproduce.make_config(rows[0], True, 3, "t.pth", "/data", True,
                                         reproduce.parse_overrides("num_epochs=5,optimizer.lr_milestones=2;4"))
    assert name == "cifar100/kd_ls/resnet32x4-resnet8x4/seed3"
    assert config.num_epochs == 5 and tuple(config.optimizer.lr_milestones) == (2, 4) and config.batch_size == 16
    assert reproduce.setting(config) == "T 2, KD 9, CE 0.1"
    with pytest.raises(ValueError, match="no field"):
        reproduce.make_config(rows[0], True, 0, "t.pth", "", overrides=[("num_epoch", "3")])


@pytest.fixture(scope="module")
def official_teachers(tmp_path_factory):
    """mdistiller's layout, resnet32x4_vanilla/ckpt_epoch_240.pth, holding a (random) resnet8."""
    import torch
    from torch_reference.resnets import cifar_resnet

    root = tmp_path_factory.mktemp("cifar_teachers")
    os.makedirs(root / "resnet32x4_vanilla")
    torch.manual_seed(0)
    torch.save({"epoch": 240, "model": cifar_resnet("resnet8", 100).state_dict()},
               root / "resnet32x4_vanilla" / "ckpt_epoch_240.pth")
    return str(root)


def test_reproduce_end_to_end_resumes_a_half_done_table(tmp_path, official_teachers, capsys):
    from zkd import train

    root = str(tmp_path / "work")
    common = ["--rows", "kd:R32x4:R8x4", "--ls", "both", "--seeds", "0", "--teachers_dir", official_teachers,
              "--workdir_root", root, "--runlocal"]
    calls = []
    real = train.train_and_evaluate

    def counting(config, workdir, *a, **k):
        calls.append(workdir)
        return real(config, workdir, *a, **k)

    kd = os.path.join(root, "cifar100/kd/resnet32x4-resnet8x4/seed0")
    kd_ls = os.path.join(root, "cifar100/kd_ls/resnet32x4-resnet8x4/seed0")
    with mock_cifar100(), mock.patch.object(train, "train_and_evaluate", counting):
        # 1. a first pass of one epoch per run
        reproduce.main(common + ["--override", TINY.format(epochs=1)])
        assert calls == [kd, kd_ls]
        # 2. two epochs wanted: KD resumes and finishes, then KD+LS is interrupted before its summary
        def interrupted(config, workdir, *a, **k):
            if workdir == kd_ls:
                raise KeyboardInterrupt
            return counting(config, workdir, *a, **k)

        with mock.patch.object(train, "train_and_evaluate", interrupted), pytest.raises(KeyboardInterrupt):
            reproduce.main(common + ["--override", TINY.format(epochs=2)])
        half = open(os.path.join(root, "results.md")).read()
        assert "| 1/1 |" in half and "| 0/1 |" in half  # KD done, KD+LS not yet
        listed = reproduce.main(common + ["--override", TINY.format(epochs=2), "--list"])
        assert len(listed) == 2 and "done   " + kd in capsys.readouterr().out
        # 3. the same command again: KD is skipped, KD+LS resumes from its epoch-1 checkpoint
        calls.clear()
        table = reproduce.main(common + ["--override", TINY.format(epochs=2)])
        assert calls == [kd_ls]
        # 4. and once more: nothing to do
        calls.clear()
        assert reproduce.main(common + ["--override", TINY.format(epochs=2)]) == table
        assert calls == []
    for workdir in (kd, kd_ls):
        assert [e["epoch"] for e in metrics_io.read_metrics(workdir, "eval")] == [1, 2]  # resumed, not redone
    summaries = {w: json.load(open(os.path.join(w, "summary.json"))) for w in (kd, kd_ls)}
    lines = [line for line in table.splitlines() if line.startswith("| table2")]  # R32x4 -> R8x4: same family
    assert len(lines) == 2
    for line, workdir, paper in zip(lines, (kd, kd_ls), (73.33, 76.62)):
        s = summaries[workdir]
        assert f"| {s['best_top1']:.2f} | {s['last_top1']:.2f} | {paper:.2f} |" in line
        assert f"{s['best_top1'] - paper:+.2f}" in line
    assert "T 2, KD 9, CE 0.1" in lines[1] and "T 4, KD 0.9, CE 0.1" in lines[0]
    saved = json.load(open(os.path.join(root, "results.json")))
    assert [e["ls"] for e in saved] == [False, True] and saved[1]["runs"][0]["epochs"] == 2


def test_mean_std_over_seeds():
    assert reproduce.mean_std([]) == ""
    assert reproduce.mean_std([70.0]) == "70.00"
    assert reproduce.mean_std([70.0, 72.0]) == "71.00 ± 1.41"


# ----------------------------------------------------------------------------- Fashion-MNIST study


def mock_fashion_mnist(num_examples: int = 256):
    """fashion_mnist as synthetic 28x28x1 arrays through zkd's own pipelines (no files needed)."""
    return mock_dataset("fashion_mnist", num_examples)


study = _load("fashion_mnist_study")


def test_study_plan_is_the_issues_design():
    runs = study.plan_runs(study.parse_args(["--workdir_root", "/w"]))
    unique = study.unique_runs(runs)
    assert runs[0]["group"] == "teacher" and runs[0]["config"].student.name == "resnet20"
    main = [r for r in runs if r["group"] == "main"]
    assert sorted({r["label"] for r in main}) == ["DKD", "DKD+LS", "KD", "KD+LS"] and len(main) == 12
    ablation = [r for r in runs if r["group"] == "ablation"]
    assert sorted({r["weight"] for r in ablation}) == [0.9, 3.0, 9.0, 18.0] and len(ablation) == 24
    assert all(r["config"].loss.temperature == 2.0 and r["config"].loss.ce_weight == 0.1 for r in ablation)
    # KD+LS at weight 9 is the main KD+LS run: trained once
    shared = [r for r in ablation if r["ls"] and r["weight"] == 9.0]
    assert {r["workdir"] for r in shared} == {f"/w/kd_ls/seed{s}" for s in (0, 1, 2)}
    assert len(unique) == 1 + 12 + 21
    estimate = sum(study.estimate_seconds(r, study.ASSUMED_IMG_S) for r in unique) / 60
    assert 45 < estimate < 90, estimate  # sized for ~90 minutes of a 2-core CPU
    assert 0.3 < study.standardized_max_probability(10, 2.0) < study.standardized_max_probability(100, 2.0) < 1


def test_study_end_to_end_tiny(tmp_path):
    from zkd import train

    root, results, figures = str(tmp_path / "w"), str(tmp_path / "fm.md"), str(tmp_path / "fig")
    argv = ["--workdir_root", root, "--results", results, "--figures_dir", figures, "--source", "", "--data_dir", "",
            "--teacher", "resnet8", "--student", "resnet8", "--teacher_epochs", "1", "--teacher_steps", "2",
            "--student_epochs", "2", "--train_steps", "1", "--methods", "kd,kd_ls", "--seeds", "0",
            "--ablation_weights", "9", "--ablation_seeds", "0"]
    calls = []
    real = train.train_and_evaluate

    def counting(config, workdir, *a, **k):
        calls.append(workdir)
        return real(config, workdir, *a, **k)

    with mock_fashion_mnist(), mock.patch.object(train, "train_and_evaluate", counting):
        text = study.main(argv)
        assert len(calls) == 4  # teacher, KD, KD+LS (= ablation KD+LS w9), ablation plain KD w9 at T 2
        calls.clear()
        assert study.main(argv) == text and calls == []  # everything finished: nothing reruns
    assert open(results).read() == text
    assert text.rstrip().endswith(study.ANALYSIS_PLACEHOLDER)
    written = text.replace(study.ANALYSIS_PLACEHOLDER, "LS helps here because ...\n\nTwo paragraphs.")
    with open(results, "w") as f:  # a hand-written analysis survives the tables being rewritten
        f.write(written)
    with mock_fashion_mnist():
        assert study.main(argv) == written
    kd = json.load(open(os.path.join(root, "kd", "seed0", "summary.json")))
    kd_ls = json.load(open(os.path.join(root, "kd_ls", "seed0", "summary.json")))
    assert f"| KD | T 4, KD 0.9, CE 0.1 | 1/1 | {kd['best_top1']:.2f} | {kd['last_top1']:.2f} |" in text
    assert f"| KD+LS | T 2, KD 9, CE 0.1 | 1/1 | {kd_ls['best_top1']:.2f} |" in text
    assert f"| KD → KD+LS | 1 | {kd_ls['best_top1'] - kd['best_top1']:.2f} |" in text
    assert "| 9 | " in text and "python experiments/fashion_mnist_study.py --workdir_root" in text
    stats = json.load(open(os.path.join(figures, "logit_stats", "logit_stats.json")))
    assert set(stats["students"]) == {"KD", "KD+LS"} and stats["num_examples"] == 256
    best = [e for e in metrics_io.read_metrics(os.path.join(root, "kd", "seed0"), "eval")
            if e["epoch"] == kd["best_epoch"]][0]
    assert stats["students"]["KD"]["agreement"] == pytest.approx(best["agreement"])  # the trainer's own number
    for name in ("ablation.png", "curves.png", "logit_std.png", "logit_stats/logit_distributions.png",
                 "logit_stats/class_mean_logit_diff.png"):
        assert os.path.getsize(os.path.join(figures, name)) > 1000, name


# ----------------------------------------------------------------------------- converged Fashion-MNIST study

converged = _load("fashion_mnist_converged")


def test_converged_study_plan_tunes_on_validation_and_reports_on_test():
    args = converged.argparse.Namespace(workdir_root="/w", data_dir="/d", teacher="resnet20", student="resnet8",
                                        train_split="train[:10000]", val_split="train[50000:]", teacher_epochs=15,
                                        student_epochs=12, tune_epochs=4, dkd_warmup=2)
    runs = {name: (kind, c) for name, kind, c in converged.plan(args)}
    assert list(runs) == ["teacher", "tune_kd", "tune_kd_ls", "tune_dkd", "tune_dkd_ls", "final_kd", "final_kd_ls",
                          "final_dkd", "final_dkd_ls", "default_dkd", "default_dkd_ls"]
    kind, teacher = runs["teacher"]
    assert kind == "single" and teacher.method == "ce" and teacher.num_epochs == 15
    for name, (kind, c) in runs.items():
        assert c.dataset == "tfds:fashion_mnist" and c.data.train_split == "train[:10000]"
        if name.startswith("tune_"):
            assert c.data.test_split == "train[50000:]" and c.num_epochs == 4  # chosen on validation, shorter
            assert c.logit_stand == name.endswith("_ls") and c.teacher.checkpoint == "/w/teacher"
            # every method: the authors' grid, base temperature {2, 3} x weight {3, ..., 15}; 10 students
            grid = {(p.config.loss.temperature, converged.weight_of(p.values)) for p in sweep.grid_points(c)}
            assert grid == {(t, w) for t in (2.0, 3.0) for w in (3.0, 6.0, 9.0, 12.0, 15.0)}
            if c.method == "dkd":  # the weight multiplies alpha and beta (DKD's 1 : 8)
                assert all(p.config.loss.dkd_beta == 8 * p.config.loss.dkd_alpha for p in sweep.grid_points(c))
        elif name != "teacher":
            assert c.data.test_split == "test" and tuple(c.sweep.seed) == (0, 1, 2) and c.num_epochs == 12
    assert runs["final_dkd"][1].loss.dkd_warmup_epochs == 2.0 and runs["tune_dkd_ls"][1].loss.dkd_warmup_epochs == 2.0
    ref, ref_ls = runs["default_dkd"][1].loss, runs["default_dkd_ls"][1].loss
    assert (ref.temperature, ref.dkd_alpha, ref.dkd_beta) == (4.0, 1.0, 8.0) and not runs["default_dkd"][1].logit_stand
    assert (ref_ls.temperature, ref_ls.dkd_alpha, ref_ls.dkd_beta) == (2.0, 9.0, 72.0)
    c = runs["final_dkd_ls"][1]
    converged.set_setting(c, "dkd_ls", 3.0, 6.0)
    assert (c.loss.temperature, c.loss.dkd_alpha, c.loss.dkd_beta) == (3.0, 6.0, 48.0)
    # the train slice and the validation slice do not overlap
    assert int(args.train_split[len("train[:"):-1]) <= int(args.val_split[len("train["):-2])


def test_converged_study_choice_convergence_and_report():
    grid = [{"values": {"temperature": t, "kd_weight": w}, "best_top1": 80 + t + w / 100, "last_top1": 0.0, "curve": []}
            for t in converged.GRID_T for w in converged.GRID_W]
    assert converged.choose(grid) == (3.0, 15.0)
    c = converged.convergence([50.0, 70.0, 80.0, 85.0, 88.0, 88.1, 88.3, 88.2, 88.25])
    assert c["best"] == 88.3 and c["best_epoch"] == 7 and c["last_third_change"] == pytest.approx(0.15)
    assert c["converged"] and not converged.convergence([50.0, 60.0, 70.0])["converged"]

    def final(last):
        return {"points": [{"values": {"seed": s}, "best_top1": v + 0.5, "last_top1": v, "curve": [v - 5, v, v]}
                           for s, v in enumerate(last)]}

    dkd_grid = [{"values": {"temperature": t, "dkd_alpha": w, "dkd_beta": 8 * w}, "best_top1": 70 + w,
                 "last_top1": 0.0, "curve": []} for t in converged.GRID_T for w in converged.GRID_W]
    assert converged.choose(dkd_grid) == (2.0, 15.0)
    out = {"runs": {"teacher": {"curve": [80.0, 85.0, 90.0, 90.1]},
                    "tune_kd": {"points": grid, "images_per_second": 100.0},
                    "tune_kd_ls": {"points": grid, "images_per_second": 90.0},
                    "tune_dkd": {"points": dkd_grid, "images_per_second": 90.0},
                    "tune_dkd_ls": {"points": dkd_grid, "images_per_second": 90.0},
                    "final_kd": final([88.0, 89.0, 90.0]), "final_kd_ls": final([89.0, 89.0, 89.0]),
                    "final_dkd": final([87.0, 87.0, 88.0]), "final_dkd_ls": final([86.0, 88.0, 87.0]),
                    "default_dkd": final([80.0, 80.0, 80.0]), "default_dkd_ls": final([70.0, 80.0, 90.0])},
           "chosen": {"kd": (3.0, 15.0), "kd_ls": (2.0, 9.0), "dkd": (2.0, 15.0), "dkd_ls": (3.0, 3.0)},
           "seconds": {"teacher": 60.0}}
    args = converged.argparse.Namespace(teacher="resnet20", train_split="train[:10000]", val_split="train[50000:]",
                                        dkd_warmup=2, tune_epochs=4)
    text = converged.report(args, out)
    assert "| KD | T 3, KD 15, CE 0.1 | 89.50 ± 1.00 | 89.00 ± 1.00 | 88.00, 89.00, 90.00 |" in text
    assert "| KD+LS | base T 2, KD 9, CE 0.1 | 89.50 ± 0.00 | 89.00 ± 0.00 |" in text
    assert "| DKD | T 2, α 15, β 120, CE 1, warm-up 2 | 87.83 ± 0.58 |" in text
    assert "| DKD+LS, untuned | base T 2, α 9, β 72, CE 1, warm-up 2 | 80.50 ± 10.00 | 80.00 ± 10.00 |" in text
    assert "KD+LS - KD, each at its tuned setting: +1.00, +0.00, -1.00 (mean +0.00)" in text
    assert "DKD+LS - DKD, each at its tuned setting: -1.00, +1.00, -1.00 (mean -0.33)" in text
    assert "DKD+LS - DKD, both untuned: -10.00, +0.00, +10.00 (mean +0.00)" in text
    assert "| 3 | 83.03 | 83.06 | 83.09 | 83.12 | 83.15 |" in text  # the tuning grid, T rows x weight columns
    assert "| 3 | 73.00 | 76.00 | 79.00 | 82.00 | 85.00 |" in text and "| DKD+LS untuned seed 2 | 3 |" in text
    assert "| teacher | 4 | 90.10 (4) | 90.10 | +0.10 | yes |" in text
    assert "the sweep trained 100 batch images/s, 1000 student-images/s" in text
    del out["runs"]["final_dkd_ls"], out["runs"]["default_dkd_ls"], out["runs"]["tune_dkd_ls"]  # --report_only, early
    del out["chosen"]["dkd_ls"]
    text = converged.report(args, out)
    assert "| DKD+LS | (chosen by tuning) | not run yet | | |" in text and "DKD+LS - DKD" not in text
    assert "**DKD+LS**: not tuned yet" in text


def test_converged_study_results_file_has_figures_and_keeps_the_analysis(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is in the test extra")
    grid = [{"values": {"temperature": t, "kd_weight": w}, "best_top1": 80 + t + w / 100, "last_top1": 0.0, "curve": []}
            for t in converged.GRID_T for w in converged.GRID_W]
    final = {"points": [{"values": {"seed": s}, "best_top1": 88.0, "last_top1": 88.0, "curve": [80.0, 85.0 + s, 88.0]}
                        for s in range(3)]}
    out = {"runs": {"teacher": {"curve": [80.0, 90.0]}, "tune_kd": {"points": grid, "images_per_second": 1.0},
                    "tune_kd_ls": {"points": grid, "images_per_second": 1.0}, "final_kd": final},
           "chosen": {"kd": (3.0, 15.0), "kd_ls": (2.0, 9.0)}, "seconds": {"teacher": 1.0}}
    results = tmp_path / "results.md"
    args = converged.argparse.Namespace(teacher="resnet20", train_split="train[:10000]", val_split="train[50000:]",
                                        dkd_warmup=2, tune_epochs=4, results=str(results),
                                        figures_dir=str(tmp_path / "figs"))
    converged.write_results(args, out)
    text = results.read_text()
    assert "![tuning](figs/tuning.png)" in text and "![test top-1 per epoch](figs/curves.png)" in text
    for name in ("tuning.png", "curves.png"):
        assert (tmp_path / "figs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert text.endswith(converged.ANALYSIS_PLACEHOLDER)
    results.write_text(text.replace(converged.ANALYSIS_PLACEHOLDER, "## Analysis\n\nLS lost here.\n"))
    out["runs"]["final_kd_ls"] = final  # a rerun with more results: tables rewritten, the analysis kept
    converged.write_results(args, out)
    text = results.read_text()
    assert "| KD+LS | base T 2, KD 9, CE 0.1 | 88.00 ± 0.00 |" in text
    assert text.endswith("## Analysis\n\nLS lost here.\n") and text.count("## Analysis") == 1


# ----------------------------------------------------------------------------- step benchmark


def test_bench_parts_table_reports_ms_and_pytorch_over_zkd():
    """--components: img/s of the parts become ms per call, and the ratio is PyTorch's time over
    zkd's default (the last zkd preset), > 1 where zkd is faster."""
    bench = _load("bench_train_step")
    batch = 64
    ms = {"xla": 2000.0, ("xla", "teacher forward"): 1500.0, ("xla", "student step"): 900.0,
          "zkd": 1000.0, ("zkd", "teacher forward"): 800.0, ("zkd", "student step"): 400.0,
          "torch": 1250.0, ("torch", "teacher forward"): 600.0, ("torch", "student step"): 600.0}
    ips = {key: 1000.0 * batch / value for key, value in ms.items()}
    lines = bench.parts_table(ips, ["xla", "zkd", "torch"], batch).splitlines()
    assert lines[0].split()[-4:] == ["zkd[xla]", "zkd[zkd]", "torch", "torch/zkd"]
    rows = {line[:36].strip(): line[36:].split() for line in lines[1:]}
    assert rows["teacher forward"] == ["1500", "800", "600", "0.75"]
    assert rows["student step (CE)"] == ["900", "400", "600", "1.50"]
    assert rows["distillation step"] == ["2000", "1000", "1250", "1.25"]
    no_torch = bench.parts_table({k: v for k, v in ips.items() if "torch" not in k}, ["xla", "zkd"], batch)
    assert "torch" not in no_torch and no_torch.splitlines()[1].split()[-2:] == ["1500", "800"]


def test_bench_rate_line_sets_flops_against_the_matmul_and_the_peak():
    """The step's FLOP/s = XLA's GFLOP per image x img/s, as shares of the matrix product's rate
    and of a given peak."""
    bench = _load("bench_train_step")
    line = bench.rate_line(2.0, {"zkd": 50.0, "torch": 25.0}, ["zkd", "torch"], 200e9, "a product", 1.0)
    assert "zkd[zkd] 100 GFLOP/s, torch 50 GFLOP/s = 50% / 25% of a product (200 GFLOP/s)" in line
    assert line.endswith("; 10.0% / 5.0% of the 1 TFLOP/s peak given")
    assert "peak" not in bench.rate_line(2.0, {"zkd": 50.0}, ["zkd"], 200e9, "a product")


def test_bench_flops_counts_products_and_convolutions_by_formula():
    """XLA's count, as the benchmark reads it, is 2 x multiply-adds: 2mkn for a product; for a
    3x3 'SAME' convolution 2 B Cin Cout x the kernel taps that fall inside the image (zero padding
    is not counted: (3 hw - 2) per spatial axis), checked against these formulas."""
    import jax

    bench = _load("bench_train_step")
    m, k, n = 8, 16, 4
    assert bench.flops(jax.jit(jnp.matmul).lower(jnp.zeros((m, k)), jnp.zeros((k, n)))) == 2 * m * k * n
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    b, hw, cin, cout = 2, 8, 3, 5
    taps = (3 * hw - 2) ** 2
    assert bench.flops(conv.lower(jnp.zeros((b, hw, hw, cin)), jnp.zeros((3, 3, cin, cout)))) == \
        2 * b * cin * cout * taps


def test_bench_counts_every_step_of_a_multi_step_dispatch():
    """--steps_per_dispatch: a contestant whose call runs k steps is credited k x batch images."""
    import time

    bench = _load("bench_train_step")

    def one():
        time.sleep(0.01)

    def four():
        time.sleep(0.01)

    four.images = 4 * 8
    ips = bench.interleaved_images_per_second({"one": one, "four": four}, 8, 3)
    assert 3.0 < ips["four"] / ips["one"] < 5.0


def test_synthetic_run_trains_evaluates_and_checkpoints_end_to_end(tmp_path, capsys):
    """experiments/synthetic_run.py (#16 Part B's end-to-end run), tiny: device-resident synthetic
    CIFAR-shaped data, several steps per dispatch, exact evaluation, checkpoints, no event files."""
    run = _load("synthetic_run")
    out = run.main(["--teacher", "resnet8", "--student", "resnet8", "--epochs", "2", "--batch", "32",
                    "--train_size", "128", "--test_size", "40", "--steps_per_dispatch", "2",
                    "--workdir", str(tmp_path / "run")])
    assert out["epochs"] == 2 and out["wall_seconds"] > out["train_seconds"] > 0
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoints", "config.json", "metrics.jsonl", "summary.json"]
    evals = metrics_io.read_metrics(str(tmp_path / "run"), "eval")
    assert [e["count"] for e in evals] == [40, 40]  # every synthetic test image, each epoch
    assert "end to end" in capsys.readouterr().out
