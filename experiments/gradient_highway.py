"""Experiment 1, the gradient highway: per-layer gradient norm at initialisation, first conv
to last, for plain, post-activation ResNet and pre-activation ResNet CIFAR nets.

    python -m experiments.gradient_highway [--depths=20,56,110] [--batch=64]   (add 1202 for the full range)
"""

from experiments.common import cifar_depths, parser as make_parser, positive_int, pyplot, save


def measure(depths, batch, seed=0):
    import keras
    import numpy as np

    import reszoo
    from reszoo.lab import propagation

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, batch)
    results = {}
    kinds = {"plain": dict(residual=False), "resnet": {}, "preact_resnet": dict(preact=True)}
    for depth in depths:
        for kind, kw in kinds.items():
            keras.utils.set_random_seed(seed)
            model = reszoo.resnet(depth, stem="cifar", **kw)
            norms = propagation.gradient_norms(model, x, y)
            results[f"{kind}{depth}"] = {"depth": depth, "kind": kind, "norms": norms.tolist(),
                                         "first_over_last": float(norms[0] / norms[-1]),
                                         "max_over_min": float(norms.max() / norms.min())}
            print(f"{kind}{depth}: first/last {norms[0] / norms[-1]:.3g}, max/min {norms.max() / norms.min():.3g}", flush=True)
    return results


def main():
    parser = make_parser(__doc__)
    parser.add_argument("--depths", type=cifar_depths, default="20,56,110")
    parser.add_argument("--batch", type=positive_int, default=64)
    args = parser.parse_args()
    depths = args.depths
    results = measure(depths, args.batch)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(depths), figsize=(4.5 * len(depths), 3.6), squeeze=False)
    for ax, depth in zip(axes[0], depths):
        for kind, style in (("plain", "C3"), ("resnet", "C0"), ("preact_resnet", "C2")):
            norms = results[f"{kind}{depth}"]["norms"]
            ax.semilogy(range(1, len(norms) + 1), norms, style, label=kind.replace("_", "-"))
        ax.set(title=f"depth {depth}: gradient norm at init", xlabel="conv layer (input -> output)",
               ylabel="||dL/dW|| (Frobenius)")
        ax.legend()
    save("gradient_highway", fig, results, args.out_dir)


if __name__ == "__main__":
    main()
