"""What ``--diagnostics`` costs: the default job (ResNet-20 on the digits, 30 epochs, batch 64,
crop augmentation) trained by ``model.fit`` with and without ``reszoo.diagnostics.Diagnostics``
at its default interval (every 100 steps, lesions every 5 epochs), in turn, a few rounds.

    python -m benchmarks.diagnostics [--epochs=30] [--rounds=2]
"""

import argparse
import statistics
import time

from benchmarks.common import emit


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--lesion_every", type=int, default=5)
    args = parser.parse_args()
    import keras
    import numpy as np

    import reszoo
    from reszoo import diagnostics
    from training import data as data_lib

    data = data_lib.load("digits")
    steps = data.num_train // 64
    x, y = (np.concatenate(p)[:64] for p in zip(*((a.numpy(), b.numpy()) for a, b in
                                                    data_lib.eval_pipeline(data, 64).take(1))))

    def fit(with_diagnostics):
        keras.utils.set_random_seed(0)
        model = reszoo.create_model("resnet20", input_shape=data.image_shape, num_classes=10,
                                    preprocessing={"mean": data.mean.tolist(), "std": data.std.tolist()})
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        callbacks = [diagnostics.Diagnostics((x, y), every_n_steps=args.every, say=lambda line: None,
                                             lesion_every_n_epochs=args.lesion_every)] if with_diagnostics else []
        train = data_lib.train_pipeline(data, 64, "auto", 0, 0, args.epochs)
        start = time.perf_counter()
        model.fit(train, epochs=args.epochs, steps_per_epoch=steps, verbose=0, callbacks=callbacks)
        return time.perf_counter() - start

    times = {False: [], True: []}
    for _ in range(args.rounds):
        for on in (False, True):
            times[on].append(fit(on))
    base, with_diag = statistics.median(times[False]), statistics.median(times[True])
    emit(benchmark="diagnostics", model="resnet20", dataset="digits", epochs=args.epochs, steps=steps * args.epochs,
         every_n_steps=args.every, lesion_every_n_epochs=args.lesion_every, fit_s=round(base, 2),
         fit_with_diagnostics_s=round(with_diag, 2), overhead=round(with_diag / base - 1, 4),
         rounds={"without": [round(t, 2) for t in times[False]], "with": [round(t, 2) for t in times[True]]})


if __name__ == "__main__":
    main()
