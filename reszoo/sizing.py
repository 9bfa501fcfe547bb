"""Size a model family to a parameter budget, e.g. a DenseNet-BC or a wider plain net with
ResNet-56's 853,018 parameters, so that architectures are compared at equal capacity."""

import itertools

from reszoo.model import count_params
from reszoo.registry import build, get_spec


def match_params(name, target, tol=0.01, **grid):
    """Find the config of registered model ``name`` whose trainable parameter count is
    closest to ``target``.

    ``grid`` maps builder arguments to candidate values. Every argument but the last is
    enumerated; the last is bisected, so the count must grow with it (widths, growth rates,
    depths do). Invalid combinations (e.g. a depth that is not 6n+2) are skipped.

    Returns ``(overrides, params)``; raises ValueError if the best is not within ``tol``
    (relative) of ``target``.

        >>> match_params("densenet_bc100_k12", 853018, depth=range(88, 130, 6),
        ...              growth_rate=range(8, 20))
    """
    get_spec(name)
    if not grid:
        raise ValueError("match_params needs an argument to vary, e.g. growth_rate=range(8, 40)")
    if target <= 0:
        raise ValueError(f"target must be a positive parameter count, got {target}")
    *outer, inner = grid
    inner_values = sorted(grid[inner])
    counts = {}

    def count(overrides):
        key = tuple(sorted(overrides.items()))
        if key not in counts:
            try:
                counts[key] = count_params(build(name, **overrides))
            except ValueError:
                counts[key] = None
        return counts[key]

    best = None
    for combo in itertools.product(*(grid[k] for k in outer)):
        fixed = dict(zip(outer, combo))
        valid = [v for v in inner_values if count({**fixed, inner: v}) is not None] \
            if len(inner_values) <= 2 else _bisect_valid(inner_values, fixed, inner, target, count)
        for v in valid:
            n = count({**fixed, inner: v})
            if n is not None and (best is None or abs(n - target) < abs(best[1] - target)):
                best = ({**fixed, inner: v}, n)
    if best is None:
        raise ValueError(f"no valid configuration of {name} in the grid {grid}")
    if abs(best[1] - target) > tol * target:
        raise ValueError(
            f"closest config {best[0]} has {best[1]:,} parameters, "
            f"{abs(best[1] - target) / target:.1%} from {target:,} (tol {tol:.1%}); widen the grid"
        )
    return best


def _bisect_valid(values, fixed, inner, target, count):
    """The candidates either side of ``target`` along a monotone ``inner`` argument."""
    lo, hi = 0, len(values) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        n = count({**fixed, inner: values[mid]})
        if n is None:
            return [v for v in values if count({**fixed, inner: v}) is not None]
        if n < target:
            lo = mid + 1
        else:
            hi = mid
    return values[max(lo - 1, 0): lo + 1]
