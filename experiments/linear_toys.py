"""Experiment 8, the linear toys: spectra of W^L vs (I + W)^L, and the two-weight loss whose
saddle at the origin becomes a global minimum with a skip connection.

    python -m experiments.linear_toys [--depth=50 --width=16 --scale=0.05]
"""

from experiments.common import parser as make_parser, positive_int, pyplot, save


def main():
    parser = make_parser(__doc__)
    parser.add_argument("--depth", type=positive_int, default=50)
    parser.add_argument("--width", type=positive_int, default=16)
    parser.add_argument("--scale", type=float, default=0.05)
    args = parser.parse_args()
    import numpy as np

    from reszoo.lab import linear

    plain, residual = linear.product_spectra(args.width, args.depth, args.scale)
    numbers = {"depth": args.depth, "width": args.width, "scale": args.scale,
               "plain_abs_eigenvalues": plain.tolist(), "residual_abs_eigenvalues": residual.tolist()}
    for skip in (False, True):
        grad, hess = linear.hessian_at_origin(skip)
        key = "skip" if skip else "no_skip"
        numbers[key] = {"loss_at_origin": linear.two_weight_loss(0.0, 0.0, skip), "gradient": grad.tolist(),
                        "hessian_eigenvalues": np.linalg.eigvalsh(hess).round(6).tolist()}
        print(f"{key}: loss {numbers[key]['loss_at_origin']}, Hessian eigenvalues {numbers[key]['hessian_eigenvalues']}")
    print(f"|eig| of W^{args.depth}: max {plain[0]:.3g}; of (I+W)^{args.depth}: {residual[-1]:.3g}..{residual[0]:.3g}")

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].semilogy(plain, "C3o", label="W^L")
    axes[0].semilogy(residual, "C0o", label="(I + W)^L")
    axes[0].set(title=f"|eigenvalues| of a product of {args.depth} layers", xlabel="index (sorted)", ylabel="|eigenvalue|")
    axes[0].legend()
    w = np.linspace(-1.5, 1.5, 121)
    w1, w2 = np.meshgrid(w, w)
    for ax, skip in zip(axes[1:], (False, True)):
        contour = ax.contourf(w1, w2, linear.two_weight_loss(w1, w2, skip), levels=30)
        fig.colorbar(contour, ax=ax, label="loss")
        ax.plot(0, 0, "r*", markersize=12)
        ax.set(title=("f = x + w2 w1 x: origin is a minimum" if skip else "f = w2 w1 x: origin is a saddle"),
               xlabel="w1", ylabel="w2")
    save("linear_toys", fig, numbers, args.out_dir)


if __name__ == "__main__":
    main()
