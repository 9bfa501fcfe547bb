"""Experiment 9, continual learning on a frozen residual backbone (Rebuffi et al. 2017, 2018):
train a backbone on a first task, then learn each later task with a new head, with residual
adapters, or by fine-tuning the whole network, and measure every task after each step.

    python -m experiments.continual [--tasks=0-4,5-9,inverted:all] [--epochs=15]
    python -m experiments.continual --dataset=cifar10 --data_dir=DIR --tasks=0-4,5-9,rotated:all
    python -m experiments.continual --dataset=folder --data_dir=my_images --image_size=64 --tasks=all,inverted:all

A task is ``[transform:]classes``: a class range (relabelled from 0) or "all", optionally
inverted (max - x) or rotated by 90 degrees. The default, on the embedded digits: digits 0-4,
then digits 5-9, then inverted digits of all ten classes.
"""

from experiments.common import load_data, parser, positive_int, pyplot, save


def main():
    p = parser(__doc__)
    p.add_argument("--dataset", default="digits", help="digits (embedded), folder, or a prepared tfds name")
    p.add_argument("--data_dir", default=None, help="tfds data directory, or the image folder")
    p.add_argument("--image_size", type=positive_int, default=None, help="folder and variable-size tfds images")
    p.add_argument("--tasks", default="0-4,5-9,inverted:all", help="comma-separated [transform:]classes")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--base_width", type=positive_int, default=16)
    p.add_argument("--epochs", type=positive_int, default=15)
    args = p.parse_args()
    import reszoo
    from reszoo.datasets import channel_stats
    from reszoo.lab import continual

    x, y, x_test, y_test, _ = load_data(args, raw=True)
    try:
        tasks = [continual.make_task(s.strip(), x, y, x_test, y_test) for s in args.tasks.split(",")]
    except ValueError as err:
        p.error(str(err))
    first = tasks[0].x
    mean, std = channel_stats(first)
    stats = {"mean": mean.tolist(), "std": std.tolist()}

    def build(num_classes):
        return reszoo.create_model(args.model, base_width=args.base_width, input_shape=first.shape[1:],
                                   num_classes=num_classes, preprocessing=stats)

    results = continual.learn(build, tasks, args.epochs, say=lambda line: print(line, flush=True))
    results.update(dataset=args.dataset, model=args.model, base_width=args.base_width, epochs=args.epochs)
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    steps = [f"after {t}" for t in results["tasks"]]
    for ax, method in zip(axes, continual.METHODS):
        curve = results[method]["accuracy"]
        for j, name in enumerate(results["tasks"]):
            xs = list(range(j, len(curve)))
            ax.plot(xs, [100 * curve[i][j] for i in xs], marker="o", label=f"task {name}")
        stored = results[method]["stored_params"][1:]
        ax.set(title=f"{method}: {max(stored):,} parameters stored per task", ylabel="test accuracy (%)",
               ylim=(0, 101))
        ax.set_xticks(range(len(steps)), steps, fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle(f"Continual learning, {args.model} on {args.dataset}")
    save("continual", fig, results, args.out_dir)


if __name__ == "__main__":
    main()
