r"""Fashion-MNIST (real data that works offline): small teachers and students on 28x28x1.

    python -m zkd.data.prepare --dataset fashion_mnist --source /usr/share/datasets/fashion-mnist --data_dir ~/tensorflow_datasets
    python -m zkd.main --config=configs/fashion_mnist.py:method=ce,model=resnet20 --workdir=workdirs/fm_teacher
    python -m zkd.main --config=configs/fashion_mnist.py:method=kd,ls=1,teacher_checkpoint=workdirs/fm_teacher

Arguments: method = ce (train ``model`` from scratch) | kd | dkd | mlkd | ctkd; model (the
student, or the model trained by ce); teacher; ls = 0/1; temperature / kd_weight (-1: the
paper's CIFAR defaults: T 4 / KD 0.9 without LS, base T 2 / KD 9 with LS); epochs; seed;
train_steps (>0 caps the steps per epoch); runlocal. See zkd.recipes.fashion_mnist. The
README's main job (python -m zkd.quickstart) trains with these settings.
"""

from zkd import recipes


def get_config(arg=None):
    a = recipes.parse_arg(
        arg, method="kd", model="resnet8", teacher="resnet20", ls=False, temperature=-1.0, kd_weight=-1.0,
        epochs=4, seed=0, teacher_checkpoint="", train_steps=-1, runlocal=False,
    )
    c = recipes.fashion_mnist(a.method, a.model, a.teacher, a.ls, a.epochs, a.seed, a.teacher_checkpoint,
                              a.train_steps, a.temperature, a.kd_weight)
    if a.runlocal:
        recipes.shrink_for_local_run(c)
    return recipes.finalize(c)
