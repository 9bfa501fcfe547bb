"""Experiment 6, loss landscape (Li et al. 2018): filter-normalised 1-D and 2-D slices of the
training loss around a trained ResNet-56 and plain-56, on the embedded digits or a prepared
tfds dataset (``--dataset=cifar10``).

    python -m experiments.landscape [--epochs=8 --grid=21 --span=1.0 --samples=512] [--dataset=cifar10]
"""

from experiments.common import cifar_depth, data_parser, load_data, positive_int, pyplot, save
from experiments.data import title


def main():
    parser = data_parser(__doc__)
    parser.add_argument("--depth", type=cifar_depth, default=56)
    parser.add_argument("--epochs", type=positive_int, default=8)
    parser.add_argument("--grid", type=positive_int, default=21)
    parser.add_argument("--span", type=float, default=1.0)
    parser.add_argument("--samples", type=positive_int, default=512)
    args = parser.parse_args()
    import numpy as np

    from reszoo.lab import landscape

    x, y, _, _, classes = load_data(args)
    steps = np.linspace(-args.span, args.span, args.grid)
    results = {"alphas": steps.tolist(), "depth": args.depth, "epochs": args.epochs, "dataset": args.dataset}
    results.update(landscape.compare(x, y, args.depth, args.epochs, steps, args.samples, num_classes=classes,
                                     say=lambda line: print(line, flush=True)))
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, color in ((f"resnet{args.depth}", "C0"), (f"plain{args.depth}", "C3")):
        axes[0].plot(steps, results[name]["1d"], color, label=name)
    axes[0].set(title="1-D slice (filter-normalised direction)", xlabel="step along the direction",
                ylabel="training loss (cross-entropy)", yscale="log")
    axes[0].legend()
    for ax, name in zip(axes[1:], (f"resnet{args.depth}", f"plain{args.depth}")):
        grid = np.log10(np.asarray(results[name]["2d"]))
        contour = ax.contour(steps, steps, grid, levels=20)
        fig.colorbar(contour, ax=ax, label="log10 training loss")
        ax.set(title=f"{name}: 2-D slice ({title(args.dataset)})", xlabel="direction 1", ylabel="direction 2")
    save("landscape", fig, results, args.out_dir)


if __name__ == "__main__":
    main()
