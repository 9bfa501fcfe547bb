"""Train or fine-tune any reszoo model: ``python -m training.train --model=resnet56 --dataset=cifar10``.

With no flags it trains ResNet-20 on the embedded UCI digits and reports test accuracy.
Re-running the same command resumes from model_dir's last checkpoint (``training.run_folder``).
Its flags are ``training.flags``; once they are parsed, ``training.fit`` runs.
"""

from training import flags as run_flags
from training.common import command

BODY = "training.fit"

run_flags.define()


def cli():
    """``reszoo-train`` and ``python -m training.train``."""
    command.run(BODY, run_flags, __doc__, run_as="training.train", groups=run_flags.TRAIN_GROUPS,
                aliases=run_flags.ALIASES)


if __name__ == "__main__":
    cli()
