"""Build time of the deepest nets (and their first forward pass, which traces the graph).

    python -m benchmarks.build_time
"""

import time

from benchmarks.common import emit


def main():
    import numpy as np

    import reszoo

    for name in ("resnet1202", "preact_resnet1001", "densenet_bc190_k40"):
        start = time.perf_counter()
        model = reszoo.create_model(name)
        built = time.perf_counter() - start
        start = time.perf_counter()
        model.predict(np.zeros((1, *model.input_shape[1:]), "float32"), verbose=0)
        emit(bench="build_time", model=name, layers=len(model.layers), params=reszoo.count_params(model),
             build_s=round(built, 2), first_predict_s=round(time.perf_counter() - start, 2))


if __name__ == "__main__":
    main()
