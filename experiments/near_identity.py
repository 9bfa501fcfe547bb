"""Experiment 3, near-identity blocks: singular values of a block's input-output Jacobian at
initialisation, for a plain block F and a residual block x + F(x) whose branch has spectral
norm eps (Weyl: all of them in [1 - eps, 1 + eps]).

    python -m experiments.near_identity [--eps=0.1,0.3] [--size=4 --channels=4]
"""

from experiments.common import floats, parser as make_parser, positive_int, pyplot, save


def main():
    parser = make_parser(__doc__)
    parser.add_argument("--eps", type=floats, default="0.1,0.3")
    parser.add_argument("--size", type=positive_int, default=4)
    parser.add_argument("--channels", type=positive_int, default=4)
    args = parser.parse_args()
    from reszoo.lab import jacobian

    shape = (args.size, args.size, args.channels)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    numbers = {"shape": list(shape)}
    for i, eps in enumerate(args.eps):
        plain, scaled, residual = jacobian.block_spectra(eps, shape)
        if i == 0:
            ax.plot(plain, "C3o-", ms=3, label="plain block F (He init)")
            numbers["plain"] = plain.tolist()
        ax.plot(residual, f"C{i}o-", ms=3, label=f"residual x + F(x), ||J_F|| = {eps}")
        ax.axhspan(1 - eps, 1 + eps, color=f"C{i}", alpha=0.12)
        numbers[f"eps={eps}"] = {"branch": scaled.tolist(), "residual": residual.tolist(),
                                 "residual_min": float(residual.min()), "residual_max": float(residual.max())}
        print(f"eps={eps}: residual block singular values in [{residual.min():.4f}, {residual.max():.4f}]; "
              f"plain block in [{plain.min():.3g}, {plain.max():.3g}]")
    ax.set(title="Singular values of a block's Jacobian at init (bands: [1 - eps, 1 + eps])",
           xlabel="index (sorted)", ylabel="singular value")
    ax.legend(fontsize=8)
    save("near_identity", fig, numbers, args.out_dir)


if __name__ == "__main__":
    main()
