"""Experiment 10, residual diagnostics on a real run (reszoo.diagnostics): a plain-56 and a
ResNet-56 trained side by side on the embedded digits by training.train --diagnostics; the
measurements tell them apart in the first epoch (the plain net's gradient alarm fires, the
ResNet's does not).

    python -m experiments.diagnostics [--epochs=10] [--every=5]
"""

import json
import os
import subprocess
import sys
import tempfile

from experiments.common import parser as make_parser, positive_int, pyplot, save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETS = ("plain56", "resnet56")


def train(model, epochs, every, folder):
    """``training.train --diagnostics=every`` of ``model`` on the digits: (records, alarm lines,
    test accuracy)."""
    from reszoo import diagnostics

    proc = subprocess.run([sys.executable, "-m", "training.train", f"--model={model}", f"--epochs={epochs}",
                           f"--diagnostics={every}", f"--model_dir={folder}", "--seed=0"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
        raise SystemExit(f"diagnostics: training {model} failed: {proc.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(folder, "results.json")) as f:
        accuracy = json.load(f)["test_accuracy"]
    alarms = [line for line in proc.stdout.splitlines() if line.startswith("diagnostics:")]
    return diagnostics.read(os.path.join(folder, diagnostics.DIAGNOSTICS_FILE)), alarms, accuracy


def figure(results):
    import numpy as np

    from reszoo import diagnostics

    plt = pyplot()
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 3.8))
    for net, color in zip(NETS, ("C3", "C0")):
        measured = [r for r in results[net]["records"] if "gradient_norm" in r]
        steps = [r["step"] for r in measured]
        ratios = [r["gradient_ratio"] for r in measured]
        window = diagnostics.WINDOW
        medians = [float(np.median(ratios[i + 1 - window:i + 1])) for i in range(window - 1, len(ratios))]
        left.semilogy(steps, ratios, color, ls="none", marker=".", ms=3, alpha=0.4)
        left.semilogy(steps[window - 1:], medians, color, label=f"{net} (median of {window})")
        alarm = results[net]["first_alarm_epoch"]
        if alarm is not None:
            first = next(r["step"] for r in measured if any(a.startswith(f"diagnostics: step {r['step']}:")
                                                            for a in results[net]["alarms"]))
            left.annotate(f"alarm, step {first}", (first, medians[steps.index(first) - window + 1]), color=color,
                          xytext=(20, -25), textcoords="offset points", arrowprops=dict(arrowstyle="->", color=color))
        middle.semilogy(steps, [r["gradient_norm"]["1"] for r in measured], color, marker="o", ms=3, label=net)
    low, high = diagnostics.GRADIENT_BAND
    left.axhspan(low, high, color="C2", alpha=0.1, label="healthy band")
    left.set(title="gradient norm, first stage / last stage", xlabel="step", ylabel="ratio")
    left.legend(fontsize=8)
    middle.set(title="gradient norm reaching stage 1", xlabel="step", ylabel="RMS ||dL/dW||")
    middle.legend(fontsize=8)
    last = [r for r in results["resnet56"]["records"] if r.get("branch_ratio")][-1]
    right.semilogy(range(1, len(last["branch_ratio"]) + 1), last["branch_ratio"], "C0", marker="o", ms=3)
    right.set(title=f"resnet56, step {last['step']}: Var(branch) / Var(skip)", xlabel="block", ylabel="ratio")
    fig.tight_layout()
    return fig


def main():
    parser = make_parser(__doc__)
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--every", type=positive_int, default=5)
    parser.add_argument("--replot", action="store_true", help="draw the figure again from the saved JSON")
    args = parser.parse_args()
    if args.replot:
        with open(os.path.join(args.out_dir, "diagnostics.json")) as f:
            results = json.load(f)
        save("diagnostics", figure(results), results, args.out_dir)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for net in NETS:
            records, alarms, accuracy = train(net, args.epochs, args.every, os.path.join(tmp, net))
            first_alarm = next((r["epoch"] for r in records if "gradient_norm" in r
                                and any(line.startswith(f"diagnostics: step {r['step']}:") for line in alarms)), None)
            results[net] = {"records": records, "alarms": alarms, "first_alarm_epoch": first_alarm,
                            "test_accuracy": accuracy}
            print(f"{net}: test accuracy {accuracy:.4f}, {len(alarms)} alarm(s), first in epoch {first_alarm}",
                  flush=True)
    save("diagnostics", figure(results), results, args.out_dir)


if __name__ == "__main__":
    main()
