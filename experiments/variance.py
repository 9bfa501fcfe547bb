"""Experiment 2, variance doubling: mean squared activation after each residual block of an
unnormalised (norm=None) pre-activation ResNet stage, plain sum vs 1/sqrt(2) scaling vs a
learnable branch scale initialised at 0.

    python -m experiments.variance [--blocks=16] [--batch=128]
"""

from experiments.common import parser as make_parser, positive_int, pyplot, save


def measure(blocks, batch, seed=0):
    import keras
    import numpy as np

    import reszoo
    from reszoo import diagnostics
    from reszoo.lab import propagation

    x = np.random.default_rng(seed).normal(size=(batch, 16, 16, 3)).astype("float32")
    results = {}
    for scale in (None, "sqrt2", "learnable"):
        keras.utils.set_random_seed(seed)
        model = reszoo.resnet(layers=(blocks,), block="basic", preact=True, norm=None, residual_scale=scale,
                              input_shape=(16, 16, 3))
        moments = propagation.block_second_moments(model, x)
        ratios = diagnostics.branch_ratios(model, diagnostics.structure(model), x)  # what the callback watches
        results[str(scale)] = {"second_moment": moments.tolist(),
                               "growth_per_block": float(moments[-1] ** (1 / blocks)),
                               "branch_ratio": ratios.tolist(), "branch_ratio_median": float(np.median(ratios))}
        print(f"residual_scale={scale}: after {blocks} blocks x{moments[-1]:.3g} "
              f"(x{moments[-1] ** (1 / blocks):.3f} per block)", flush=True)
    return results


def main():
    parser = make_parser(__doc__)
    parser.add_argument("--blocks", type=positive_int, default=16)
    parser.add_argument("--batch", type=positive_int, default=128)
    args = parser.parse_args()
    results = measure(args.blocks, args.batch)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    blocks = range(1, args.blocks + 1)
    ax.semilogy(blocks, [2.0**b for b in blocks], "k:", label="2^L")
    for key, label in (("None", "x + F(x)"), ("sqrt2", "(x + F(x)) / sqrt(2)"), ("learnable", "x + 0 * F(x) (alpha = 0)")):
        ax.semilogy(blocks, results[key]["second_moment"], "o-", label=label)
    ax.set(title="Activation variance without normalisation", xlabel="residual blocks L",
           ylabel="E[x_L^2] / E[x_0^2]")
    ax.legend()
    save("variance", fig, results, args.out_dir)


if __name__ == "__main__":
    main()
