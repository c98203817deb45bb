"""The paper's toy case (Fig. 2), computed by zkd.losses, and its figure.

    python experiments/toy_case.py [--out experiments/results/toy_case.png]   # or --out gs://bucket/toy.png

Teacher logits [1, 2, 3, 4]; student S1 [1, 2, 3, 2.8] ranks the classes wrongly (argmax 3, not
4), student S2 [0.1, 0.2, 0.3, 0.4] is the teacher divided by 10 (same ranking). At temperature 1
plain KD ranks the wrong student better (KL 0.1749 < 0.3457); after Z-score standardization
(ddof=1, eps 1e-7, tau 1) S2 matches the teacher exactly (0) and S1 does not (0.0995).
docs/paper.md §2. The printed numbers are what ``zkd.losses.kd_loss`` returns, nothing else.
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np

from zkd import losses, paths

TEACHER = (1.0, 2.0, 3.0, 4.0)
STUDENTS = {"S1": (1.0, 2.0, 3.0, 2.8), "S2": (0.1, 0.2, 0.3, 0.4)}
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "toy_case.png")


def toy_numbers(temperature: float = 1.0) -> dict:
    """KL(teacher || student) of S1 and S2, without and with standardization, from zkd.losses."""
    teacher = np.asarray([TEACHER], np.float32)
    out = {}
    for name, logits in STUDENTS.items():
        student = np.asarray([logits], np.float32)
        out[name] = {
            "kd": float(losses.kd_loss(student, teacher, temperature)),
            "kd_ls": float(losses.kd_loss(student, teacher, temperature, logit_stand=True)),
        }
    return out


def format_numbers(numbers: dict) -> str:
    lines = ["student  KL(T||S) raw  KL(T||S) Z-score  (temperature 1; Z-score value unrounded)"]
    for name, v in numbers.items():
        lines.append(f"{name:<8} {v['kd']:12.4f}  {_four(v['kd_ls']):>16}  ({v['kd_ls']:.2e})")
    return "\n".join(lines)


def _four(x: float) -> str:
    """4 decimals; float32 rounding noise around an exact 0 (a KL is >= 0) prints as 0.0000."""
    return f"{abs(x) if abs(x) < 5e-5 else x:.4f}"


def draw(path: str, numbers: dict | None = None) -> str:
    """Bar charts of the logits (top) and their Z-scores (bottom); KL values in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers = numbers or toy_numbers()
    series = {"teacher": TEACHER, **STUDENTS}
    colors = {"teacher": "#444444", "S1": "#d62728", "S2": "#1f77b4"}
    classes = np.arange(len(TEACHER))
    width = 0.27
    fig, axes = plt.subplots(2, 1, figsize=(6.4, 6.2), sharex=True)
    for ax, standardized in zip(axes, (False, True)):
        for i, (name, logits) in enumerate(series.items()):
            values = np.asarray(logits, np.float32)[None]
            if standardized:
                values = np.asarray(losses.standardize(values))
            label = name
            if name != "teacher":
                key = "kd_ls" if standardized else "kd"
                label = f"{name}: KL(T||{name}) = {_four(numbers[name][key])}"
            ax.bar(classes + (i - 1) * width, values[0], width, color=colors[name], label=label)
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_title("Z-score standardized logits (ddof=1, tau 1)" if standardized else "raw logits (temperature 1)")
        ax.set_ylabel("logit")
        ax.legend(fontsize=8, loc="upper left")
    axes[1].set_xticks(classes, [f"class {c + 1}" for c in classes])
    fig.suptitle("Toy case (Sun et al., Fig. 2): plain KD prefers the wrong student S1;\n"
                 "after standardization S2 (teacher / 10) matches exactly", fontsize=10)
    fig.tight_layout()
    paths.makedirs(os.path.dirname(paths.absolute(path)))
    buffer = io.BytesIO()  # matplotlib writes local files only: the bytes go through zkd.paths
    fig.savefig(buffer, format=os.path.splitext(path)[1][1:] or None, dpi=110)
    plt.close(fig)
    with paths.open(path, "wb") as f:
        f.write(buffer.getvalue())
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="PNG to write, local or gs:// (default %(default)s)")
    args = parser.parse_args(argv)
    numbers = toy_numbers()
    print(format_numbers(numbers))
    print("figure:", draw(args.out, numbers))
    return numbers


if __name__ == "__main__":
    main()
