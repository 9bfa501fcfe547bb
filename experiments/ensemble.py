"""Experiment 5, the ensemble view (Veit et al. 2016): delete one block at a time from a
trained ResNet-56 and a trained plain-20 (the deepest plain net that trains here) and
measure test error, on the embedded digits or a prepared tfds dataset (``--dataset=cifar10``).

    python -m experiments.ensemble [--epochs=8 --base_width=8] [--dataset=cifar10 --limit=N]
"""

from experiments.common import data_parser, load_data, positive_int, pyplot, save
from experiments.data import title


def main():
    parser = data_parser(__doc__)
    parser.add_argument("--epochs", type=positive_int, default=8)
    parser.add_argument("--base_width", type=positive_int, default=8)
    args = parser.parse_args()
    from reszoo.lab import depth

    x, y, x_test, y_test, classes = load_data(args)
    results = {"dataset": args.dataset, "limit": args.limit}
    trained = depth.train_nets(x, y, ("resnet56", "plain20"), args.epochs, args.base_width, classes, verbose=2,
                               say=lambda line: print(line, flush=True))
    for name, (model, _) in trained.items():
        results[name] = depth.deletion_errors(model, x_test, y_test)
        deleted = [v for k, v in results[name].items() if k != "none"]
        print(f"{name}: test error {results[name]['none']:.3f}; one block deleted: median "
              f"{sorted(deleted)[len(deleted) // 2]:.3f}, worst {max(deleted):.3f}")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1]})
    for ax, name in zip(axes, ("resnet56", "plain20")):
        blocks = [k for k in results[name] if k != "none"]
        ax.bar(range(len(blocks)), [100 * results[name][b] for b in blocks], color="C0" if "resnet" in name else "C3")
        ax.axhline(100 * results[name]["none"], color="k", ls=":", label="nothing deleted")
        ax.set(title=f"{name}: one block deleted ({title(args.dataset)})", xlabel="deleted block (input -> output)",
               ylabel="test error (%)", ylim=(0, 100))
        ax.set_xticks(range(len(blocks)), [b.replace("conv", "").replace("_block", ".") for b in blocks],
                      rotation=90, fontsize=7)
        ax.legend()
    save("ensemble", fig, results, args.out_dir)


if __name__ == "__main__":
    main()
