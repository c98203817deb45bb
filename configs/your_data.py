r"""Your own data: any TFDS dataset, or an image folder prepared with zkd.data.prepare (docs/data.md).

    python -m zkd.data.prepare --folder ~/my_images --name my_images --data_dir ~/tensorflow_datasets --test_fraction 0.1
    python -m zkd.main --config=configs/your_data.py:dataset=tfds:my_images,image_size=64,method=ce,model=resnet20 \
        --workdir=workdirs/my_teacher
    python -m zkd.main --config=configs/your_data.py:dataset=tfds:my_images,image_size=64,method=kd,ls=1,model=resnet8,teacher_checkpoint=workdirs/my_teacher

Arguments: dataset ("tfds:NAME"; "tfds:name/config:1.0.0" works too); method = ce (train ``model``
from scratch) | kd | dkd | mlkd | ctkd, or a method of your own (a registered name or
package.module:Class: its own default loss); model (the student, or the model ce trains); teacher;
teacher_checkpoint; ls = 0/1; temperature / kd_weight (-1: the paper's CIFAR defaults); epochs;
batch_size; image_size (> 0: resize to it; needed when image sizes differ); zoo (cifar | imagenet
| vit | user); augmentation ("" the dataset's default | crop_flip | random_resized_crop | none);
data_dir; seed; train_steps (> 0 caps the steps per epoch); runlocal. Other fields (the splits,
normalization statistics, a model factory) through --config.data.* / --config.student.*.
"""

from zkd import methods, paper
from zkd.config_helpers import base_config_for, parse_arg, shrink_for_local_run
from zkd.config_schema import finalize


def get_config(arg=None):
    a = parse_arg(
        arg, dataset="", method="ce", model="resnet8", teacher="resnet20", ls=False, temperature=-1.0,
        kd_weight=-1.0, epochs=30, seed=0, teacher_checkpoint="", train_steps=-1, batch_size=64, image_size=0,
        data_dir="", augmentation="", zoo="cifar", runlocal=False,
    )
    if not a.dataset:
        raise ValueError("configs/your_data.py needs dataset=tfds:NAME (e.g. configs/your_data.py:dataset=tfds:my_images)")
    c = your_data(a.dataset, a.method, a.model, a.teacher, a.ls, a.epochs, a.seed, a.teacher_checkpoint,
                  a.train_steps, a.temperature, a.kd_weight, a.batch_size, a.image_size, a.data_dir,
                  a.augmentation, a.zoo)
    if a.runlocal:
        shrink_for_local_run(c)
    return finalize(c)


def your_data(dataset, method, model, teacher="resnet20", logit_stand=False, epochs=30, seed=0,
              teacher_checkpoint="", train_steps=-1, temperature=-1.0, kd_weight=-1.0, batch_size=64,
              image_size=0, data_dir="", augmentation="", zoo="cifar"):
    """A user's dataset ("tfds:NAME", or a built-in name): the CIFAR recipe on ``epochs`` epochs,
    models of ``zoo`` (also ``zkd.recipes.your_data``). ``image_size`` > 0 resizes the images
    (needed when their sizes differ); see docs/data.md."""
    c = base_config_for(method, model, teacher, logit_stand, seed, teacher_checkpoint)
    c.dataset, c.data_dir, c.data.image_size = dataset, data_dir, image_size
    c.student.zoo = c.teacher.zoo = zoo
    c.augmentation = augmentation

    # CIFAR-100's SGD on a small budget: x0.1 after 60% and 85% of the epochs.
    c.num_epochs, c.steps_per_epoch = epochs, train_steps
    c.batch_size, c.eval_batch_size = batch_size, 256
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
