r"""Your own data: any TFDS dataset, or an image folder prepared with zkd.data.prepare (docs/data.md).

    python -m zkd.data.prepare --folder ~/my_images --name my_images --data_dir ~/tensorflow_datasets --test_fraction 0.1
    python -m zkd.main --config=configs/your_data.py:dataset=tfds:my_images,image_size=64,method=ce,model=resnet20 \
        --workdir=workdirs/my_teacher
    python -m zkd.main --config=configs/your_data.py:dataset=tfds:my_images,image_size=64,method=kd,ls=1,model=resnet8,teacher_checkpoint=workdirs/my_teacher

Arguments: dataset ("tfds:NAME"; "tfds:name/config:1.0.0" works too); method = ce (train ``model``
from scratch) | kd | dkd | mlkd | ctkd; model (the student, or the model ce trains); teacher;
teacher_checkpoint; ls = 0/1; temperature / kd_weight (-1: the paper's CIFAR defaults); epochs;
batch_size; image_size (> 0: resize to it; needed when image sizes differ); zoo (cifar | imagenet
| vit | user); augmentation ("" the dataset's default | crop_flip | random_resized_crop | none);
data_dir; seed; train_steps (> 0 caps the steps per epoch); runlocal. Other fields (the splits,
normalization statistics, a model factory) through --config.data.* / --config.student.*. See
zkd.recipes.your_data.
"""

from zkd import recipes


def get_config(arg=None):
    a = recipes.parse_arg(
        arg, dataset="", method="ce", model="resnet8", teacher="resnet20", ls=False, temperature=-1.0,
        kd_weight=-1.0, epochs=30, seed=0, teacher_checkpoint="", train_steps=-1, batch_size=64, image_size=0,
        data_dir="", augmentation="", zoo="cifar", runlocal=False,
    )
    if not a.dataset:
        raise ValueError("configs/your_data.py needs dataset=tfds:NAME (e.g. configs/your_data.py:dataset=tfds:my_images)")
    c = recipes.your_data(a.dataset, a.method, a.model, a.teacher, a.ls, a.epochs, a.seed, a.teacher_checkpoint,
                          a.train_steps, a.temperature, a.kd_weight, a.batch_size, a.image_size, a.data_dir,
                          a.augmentation, a.zoo)
    if a.runlocal:
        recipes.shrink_for_local_run(c)
    return recipes.finalize(c)
