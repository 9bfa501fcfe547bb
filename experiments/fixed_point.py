"""Experiment 7, the fixed-point view: the weight-tied block of a ``weight_tied=True`` ResNet
stage (post-activation, norm=None) iterated K times, x_{k+1} = relu(x_k + F(x_k)), with the
update norm ||x_{k+1} - x_k|| per step for a He-initialised branch, a small branch (||F||_Lip
= eps, not contractive) and the contractive symmetric branch F = -h W^T relu(W x) at two steps.
Second panel: a weight-tied ResNet-56 (BN shared across iterations) trained on the embedded
digits, each stage's shared block iterated from that stage's input beyond the 8 iterations it
was trained with.

    python -m experiments.fixed_point [--steps=50] [--size=8 --channels=8] [--batch=16] [--train_epochs=8]
"""

from experiments.common import parser as make_parser, positive_int, pyplot, save


def measure(steps, size, channels, batch, seed=0):
    import keras
    import numpy as np

    import reszoo
    from reszoo.lab import fixed_point as fp

    shape = (size, size, channels)
    x = np.abs(np.random.default_rng(seed).normal(size=(batch, *shape))).astype("float32")

    def fresh():
        keras.utils.set_random_seed(seed)
        model = reszoo.resnet(layers=(2,), weight_tied=True, norm=None, base_width=channels,
                              input_shape=(size, size, 3), include_top=False)
        return fp.shared_block(model)

    results = {}

    def record(key, block, **extra):
        updates = fp.iterate(block, x, steps).mean(axis=1)
        ratios = updates[1:] / updates[:-1]
        results[key] = dict(extra, updates=updates.tolist(), local_lipschitz=fp.local_lipschitz(block, x[0]),
                            max_step_ratio=float(ratios.max()), last_over_first=float(updates[-1] / updates[0]))
        print(f"{key}: update norm {updates[0]:.3g} -> {updates[-1]:.3g} after {steps} steps "
              f"(largest step ratio {ratios.max():.3f}; local Lipschitz of T {results[key]['local_lipschitz']:.3f})",
              flush=True)

    record("he_init", fresh())
    for eps in (0.1, 0.5):
        block = fresh()
        first, second = (block.get_layer(f"{block.name}_{j}_conv") for j in (1, 2))
        norms = [fp.conv_norm(np.asarray(layer.kernel), shape) for layer in (first, second)]
        second.kernel.assign(second.kernel * (eps / (norms[0] * norms[1])))
        record(f"small_branch_eps={eps}", block, eps=eps)
    for step in (1.0, 1.9):
        block = fresh()
        h = fp.make_gradient_branch(block, shape, step)
        record(f"gradient_branch_step={step}", block, h=h, h_times_norm_squared=step)
    return results


LABELS = {
    "he_init": "He-init branch (T expands)",
    "small_branch_eps=0.1": "small branch, Lip(F) = 0.1 (not contractive)",
    "small_branch_eps=0.5": "small branch, Lip(F) = 0.5 (not contractive)",
    "gradient_branch_step=1.0": "contractive F = -h W'relu(Wx), h||W||^2 = 1",
    "gradient_branch_step=1.9": "contractive F = -h W'relu(Wx), h||W||^2 = 1.9",
}


def trained(epochs, steps, seed=0):
    """Train ResNet-56 (width 8) on the digits untied, weight-tied (one block per stage, BN
    shared) and with shared convs only (BN per iteration); iterate each tied stage's block
    ``steps`` times from the stage input (test images)."""
    import keras

    import reszoo
    from experiments import data
    from reszoo.lab import depth, fixed_point as fp

    x, y, x_test, y_test, classes = data.load()
    out, models = {}, {}
    for key, tied in (("untied", False), ("tied_convs", "convs"), ("tied", True)):
        print(f"training ResNet-56 (weight_tied={tied!r}) on the digits", flush=True)
        keras.utils.set_random_seed(seed)
        model = reszoo.resnet(56, base_width=8, input_shape=x.shape[1:], num_classes=classes, weight_tied=tied)
        depth.train_curve(model, x, y, epochs)
        models[key] = model
        out[key] = {"params": reszoo.count_params(model), "test_error": depth.error(model, x_test, y_test)}
        print(f"{key}: {out[key]['params']} parameters, test error {out[key]['test_error']:.3f}", flush=True)
    model = models["tied"]
    for stage in (2, 3, 4):
        start = keras.Model(model.inputs, model.get_layer(f"conv{stage}_block1_out").output)
        updates = fp.iterate(fp.shared_block(model, stage), start.predict(x_test, verbose=0), steps).mean(axis=1)
        out["tied"][f"stage{stage}_updates"] = updates.tolist()
    return out


def main():
    parser = make_parser(__doc__)
    parser.add_argument("--steps", type=positive_int, default=50)
    parser.add_argument("--size", type=positive_int, default=8)
    parser.add_argument("--channels", type=positive_int, default=8)
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--train_epochs", type=int, default=8, help="0 leaves out the trained net")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the plot compares successive updates)")
    results = measure(args.steps, args.size, args.channels, args.batch)
    if args.train_epochs > 0:
        results["trained"] = trained(args.train_epochs, args.steps)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if args.train_epochs > 0 else 1, figsize=(13, 4.2), squeeze=False)
    ax = axes[0, 0]
    iterations = range(1, args.steps + 1)
    for key, label in LABELS.items():
        ax.semilogy(iterations, results[key]["updates"], label=label)
    ax.set(title="Weight-tied residual block iterated: x_{k+1} = relu(x_k + F(x_k))",
           xlabel="iteration k", ylabel="mean ||x_{k+1} - x_k|| (per image)")
    ax.legend(fontsize=7)
    if args.train_epochs > 0:
        ax, tied = axes[0, 1], results["trained"]["tied"]
        for stage in (2, 3, 4):
            ax.semilogy(iterations, tied[f"stage{stage}_updates"], label=f"conv{stage}_tied (stage {stage - 1})")
        ax.axvline(8, color="k", ls=":", label="iterations trained (8)")
        ax.set(title=f"Trained weight-tied ResNet-56, digits (test error {100 * tied['test_error']:.1f}%)",
               xlabel="iteration k", ylabel="mean ||x_{k+1} - x_k|| (per image)")
        ax.legend(fontsize=7)
    save("fixed_point", fig, results, args.out_dir)


if __name__ == "__main__":
    main()
