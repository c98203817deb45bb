r"""Fashion-MNIST (real data that works offline): small teachers and students on 28x28x1.

    python -m zkd.data.prepare --dataset fashion_mnist --source /usr/share/datasets/fashion-mnist --data_dir ~/tensorflow_datasets
    python -m zkd.main --config=configs/fashion_mnist.py:method=ce,model=resnet20 --workdir=workdirs/fm_teacher
    python -m zkd.main --config=configs/fashion_mnist.py:method=kd,ls=1,teacher_checkpoint=workdirs/fm_teacher

Arguments: method = ce (train ``model`` from scratch) | kd | dkd | mlkd | ctkd, or a method of
your own (a registered name or package.module:Class: its own default loss); model (the student,
or the model trained by ce); teacher; ls = 0/1; temperature / kd_weight (-1: the paper's CIFAR
defaults: T 4 / KD 0.9 without LS, base T 2 / KD 9 with LS); epochs; seed; train_steps (>0 caps
the steps per epoch); runlocal. The README's main job (python -m zkd.quickstart) trains with
these settings.
"""

from zkd import methods, paper
from zkd.config_helpers import base_config_for, parse_arg, shrink_for_local_run
from zkd.config_schema import finalize


def get_config(arg=None):
    a = parse_arg(
        arg, method="kd", model="resnet8", teacher="resnet20", ls=False, temperature=-1.0, kd_weight=-1.0,
        epochs=4, seed=0, teacher_checkpoint="", train_steps=-1, runlocal=False,
    )
    c = fashion_mnist(a.method, a.model, a.teacher, a.ls, a.epochs, a.seed, a.teacher_checkpoint,
                      a.train_steps, a.temperature, a.kd_weight)
    if a.runlocal:
        shrink_for_local_run(c)
    return finalize(c)


def fashion_mnist(method, model, teacher="resnet20", logit_stand=False, epochs=4, seed=0, teacher_checkpoint="",
                  train_steps=-1, temperature=-1.0, kd_weight=-1.0):
    """Fashion-MNIST (28x28x1, 10 classes): the CIFAR recipe of ``method`` on a small budget (also
    ``zkd.recipes.fashion_mnist``). ``method="ce"`` trains ``model`` from scratch; otherwise
    ``model`` is the student. ``temperature`` / ``kd_weight`` > 0 replace the CIFAR row's.
    ``train_steps`` > 0 caps the steps per epoch."""
    c = base_config_for(method, model, teacher, logit_stand, seed, teacher_checkpoint)
    c.dataset = "fashion_mnist"
    c.student.zoo = c.teacher.zoo = "cifar"

    # CIFAR-100's SGD on a small budget: x0.1 after 60% and 85% of the epochs.
    c.num_epochs, c.steps_per_epoch = epochs, train_steps
    c.batch_size, c.eval_batch_size = 128, 1000
    c.optimizer.name, c.optimizer.schedule = "sgd", "piecewise"
    c.optimizer.learning_rate, c.optimizer.momentum, c.optimizer.weight_decay = 0.05, 0.9, 5e-4
    c.optimizer.lr_milestones, c.optimizer.lr_decay = (round(0.6 * epochs), round(0.85 * epochs)), 0.1
    c.log_every_steps, c.checkpoint_every_epochs = 50, max(1, epochs // 2)

    # The loss of method's CIFAR-100 row on this pair (zkd.paper), unless the arguments replace it.
    c.loss.update(paper.cifar_loss(method, c.teacher.name, c.student.name, c.logit_stand))
    if methods.get(method).needs_teacher:
        if temperature > 0:
            c.loss.temperature = temperature
        if kd_weight > 0:
            c.loss.kd_weight = kd_weight
    return c
