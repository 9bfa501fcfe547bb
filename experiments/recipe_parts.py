"""Do EMA and mixup do what they promise on the embedded digits? ResNet-20 trained by
``training.train`` with and without each, over a few seeds: test accuracy, mean and spread.

    python -m experiments.recipe_parts [--epochs=30] [--seeds=0,1,2]

Writes experiments/results/recipe_parts.json and prints a table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "baseline": [],
    "EMA 0.99": ["--ema_decay=0.99"],
    "mixup 0.2": ["--mixup_alpha=0.2"],
    "EMA + mixup": ["--ema_decay=0.99", "--mixup_alpha=0.2"],
}


def train(args, seed, epochs, folder):
    proc = subprocess.run([sys.executable, "-m", "training.train", f"--seed={seed}", f"--epochs={epochs}",
                           f"--model_dir={folder}", "--deterministic", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
        raise SystemExit(f"recipe_parts: training failed: {proc.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)["test_accuracy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results", "recipe_parts.json"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in VARIANTS.items():
            accuracies = [train(flags, seed, args.epochs, os.path.join(tmp, f"{len(results)}-{seed}")) for seed in seeds]
            results[name] = {"flags": flags, "accuracy": accuracies, "mean": statistics.mean(accuracies),
                             "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0}
            print(f"{name:12s} {100 * results[name]['mean']:.2f}% +- {100 * results[name]['std']:.2f} "
                  f"({', '.join(f'{100 * a:.2f}' for a in accuracies)})", flush=True)
    record = {"model": "resnet20", "dataset": "digits", "epochs": args.epochs, "seeds": seeds, "variants": results}
    tmp_out = args.out + ".tmp"
    with open(tmp_out, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp_out, args.out)


if __name__ == "__main__":
    main()
