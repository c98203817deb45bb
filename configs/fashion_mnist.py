r"""Fashion-MNIST (real data that works offline): small teachers and students on 28x28x1.

    python -m zkd.data.prepare --dataset fashion_mnist --source /usr/share/datasets/fashion-mnist --data_dir ~/tensorflow_datasets
    python -m zkd.main --config=configs/fashion_mnist.py:method=ce,model=resnet20 --workdir=workdirs/fm_teacher
    python -m zkd.main --config=configs/fashion_mnist.py:method=kd,ls=1,teacher_checkpoint=workdirs/fm_teacher

Arguments: method = ce (train ``model`` from scratch) | kd | dkd | mlkd | ctkd; model (the
student, or the model trained by ce), teacher; ls = 0/1; temperature / kd_weight (-1: the
paper's CIFAR defaults: T 4 / KD 0.9 without LS, base T 2 / KD 9 with LS); epochs; seed;
train_steps (>0 caps the steps per epoch). Batch 128, SGD 0.05 with x0.1 at 60% and 85% of the
epochs, weight decay 5e-4. The README's main job (python -m zkd.quickstart) uses these configs.
"""

from zkd import recipes


def get_config(arg=None):
    a = recipes.parse_arg(
        arg, method="kd", model="resnet8", teacher="resnet20", ls=False, temperature=-1.0, kd_weight=-1.0,
        epochs=4, seed=0, teacher_checkpoint="", train_steps=-1, runlocal=False,
    )
    if a.method == "ce":
        c = recipes.cifar_teacher(a.model, a.seed)
    else:
        c = recipes.cifar_distillation(a.method, a.teacher, a.model, a.ls, a.seed, a.teacher_checkpoint)
        if a.temperature > 0:
            c.loss.temperature = a.temperature
        if a.kd_weight > 0:
            c.loss.kd_weight = a.kd_weight
    c.dataset = "fashion_mnist"
    c.num_epochs = a.epochs
    c.batch_size, c.eval_batch_size = 128, 1000
    c.optimizer.learning_rate = 0.05
    c.optimizer.lr_milestones = (round(0.6 * a.epochs), round(0.85 * a.epochs))
    c.steps_per_epoch = a.train_steps
    c.log_every_steps = 50
    c.checkpoint_every_epochs = max(1, a.epochs // 2)
    c.paper_top1.baseline = c.paper_top1.logit_stand = -1.0
    if a.runlocal:
        recipes.shrink_for_local_run(c)
    return recipes.finalize(c)
