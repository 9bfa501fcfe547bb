"""What ``--diagnostics`` costs, two ways, each without and with the callback in turn (the
order alternating, so drift falls on both), a few rounds, medians:

- the default job, as a user runs it: ``python -m training.train`` (ResNet-20 on the digits,
  30 epochs, batch 64) and ``python -m training.train --diagnostics`` (every 100 steps, lesions
  every 5 epochs, the records into the run folder and TensorBoard), each its own process; the
  time is the run's own ``fit_seconds`` (``results.json``: its fit, with validation and
  checkpoints, and the final evaluation);
- the bare ``model.fit`` of that job (no validation, no checkpoints, no files), with and without
  ``reszoo.diagnostics.Diagnostics``: the callback's cost against the least it can be compared with.

    python -m benchmarks.diagnostics [--epochs=30] [--rounds=3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.common import emit


def _job(epochs, every, folder):
    """The default job's ``fit_seconds``, with ``--diagnostics=every`` (0: without)."""
    args = [sys.executable, "-m", "training.train", f"--model_dir={folder}", f"--epochs={epochs}"]
    proc = subprocess.run(args + ([f"--diagnostics={every}"] if every else []), capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
        raise SystemExit(f"benchmarks.diagnostics: the job failed: {proc.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)["fit_seconds"]


def _bare_fit(epochs, every, lesion_every):
    """``fit(with_diagnostics)``: the job's bare ``model.fit`` time."""
    import keras
    import numpy as np

    import reszoo
    from reszoo import diagnostics
    from training import data as data_lib

    data = data_lib.load("digits")
    x, y = (np.concatenate(p)[:64] for p in zip(*((a.numpy(), b.numpy()) for a, b in
                                                    data_lib.eval_pipeline(data, 64).take(1))))

    def fit(with_diagnostics):
        keras.utils.set_random_seed(0)
        model = reszoo.create_model("resnet20", input_shape=data.image_shape, num_classes=10,
                                    preprocessing={"mean": data.mean.tolist(), "std": data.std.tolist()})
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        callbacks = [diagnostics.Diagnostics((x, y), every_n_steps=every, say=lambda line: None,
                                             lesion_every_n_epochs=lesion_every)] if with_diagnostics else []
        train = data_lib.train_pipeline(data, 64, "auto", 0, 0, epochs)
        start = time.perf_counter()
        model.fit(train, epochs=epochs, steps_per_epoch=data.num_train // 64, verbose=0, callbacks=callbacks)
        return time.perf_counter() - start

    return fit, data.num_train // 64


def _report(job, times, **fields):
    base, with_diag = statistics.median(times[False]), statistics.median(times[True])
    emit(benchmark="diagnostics", job=job, model="resnet20", dataset="digits", fit_s=round(base, 2),
         fit_with_diagnostics_s=round(with_diag, 2), overhead=round(with_diag / base - 1, 4),
         rounds={"without": [round(t, 2) for t in times[False]], "with": [round(t, 2) for t in times[True]]},
         **fields)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--lesion_every", type=int, default=5, help="the bare fit's (the job's is the callback's default)")
    args = parser.parse_args()
    order = [on for i in range(args.rounds) for on in ((False, True) if i % 2 == 0 else (True, False))]
    times = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, on in enumerate(order):
            times[on].append(_job(args.epochs, args.every if on else 0, os.path.join(tmp, str(i))))
    _report("python -m training.train [--diagnostics]", times, epochs=args.epochs, every_n_steps=args.every)
    fit, steps = _bare_fit(args.epochs, args.every, args.lesion_every)
    times = {False: [], True: []}
    for on in order:
        times[on].append(fit(on))
    _report("model.fit", times, epochs=args.epochs, steps=steps * args.epochs, every_n_steps=args.every,
            lesion_every_n_epochs=args.lesion_every)


if __name__ == "__main__":
    main()
