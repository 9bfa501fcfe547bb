"""Experiment 4, degradation (He et al. 2015, Fig. 1 and 6): training error against epochs for
plain-20/56 and ResNet-20/56 with the same recipe (SGD, no augmentation), on the embedded
digits or on CIFAR-10 where tfds has it prepared (hours on CPU; ``--limit`` trains on a subset).

    python -m experiments.degradation [--epochs=8 --base_width=8]
    python -m experiments.degradation --dataset=cifar10 [--data_dir=DIR] --base_width=16 --epochs=30
"""

from experiments.common import cifar_depths, data_parser, load_data, positive_int, pyplot, save
from experiments.data import title


def run(data, depths, epochs, base_width, seed=0, verbose=1):
    """Training error per epoch of plain and residual nets of each depth (``depth.train_nets``)."""
    from reszoo.lab import depth

    x, y, _, _, classes = data
    names = [f"{kind}{d}" for kind in ("plain", "resnet") for d in depths]
    trained = depth.train_nets(x, y, names, epochs, base_width, classes, seed, verbose,
                               say=lambda line: print(line, flush=True))
    return {name: curve.tolist() for name, (_, curve) in trained.items()}


def main():
    parser = data_parser(__doc__)
    parser.add_argument("--depths", type=cifar_depths, default="20,56")
    parser.add_argument("--epochs", type=positive_int, default=8)
    parser.add_argument("--base_width", type=positive_int, default=8)
    args = parser.parse_args()
    depths = args.depths
    curves = run(load_data(args), depths, args.epochs, args.base_width, verbose=2)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind in zip(axes, ("plain", "resnet")):
        for i, d in enumerate(depths):
            ax.plot(range(1, args.epochs + 1), [100 * e for e in curves[f"{kind}{d}"]], f"C{i}o-", label=f"{kind}-{d}")
        ax.set(title=f"{'Plain' if kind == 'plain' else 'Residual'} nets, {title(args.dataset)}", xlabel="epoch",
               ylabel="training error (%)")
        ax.legend()
    save("degradation", fig, {"dataset": args.dataset, "limit": args.limit, "epochs": args.epochs, "base_width": args.base_width,
                              "training_error": curves}, args.out_dir)


if __name__ == "__main__":
    main()
