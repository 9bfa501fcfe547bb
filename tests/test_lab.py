"""reszoo.lab: the claims of residual learning, checked at small scale with fixed seeds."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import reszoo
from reszoo.lab import jacobian, linear, propagation

from conftest import ROOT


def test_identity_path_keeps_gradients_flowing_where_the_plain_net_does_not():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 16)
    spread = {}
    for kind, kw in {"plain": dict(residual=False), "resnet": {}, "preact": dict(preact=True)}.items():
        keras.utils.set_random_seed(0)
        norms = propagation.gradient_norms(reszoo.resnet(56, stem="cifar", **kw), x, y)
        assert len(norms) == 55 and np.all(np.isfinite(norms))
        spread[kind] = norms.max() / norms.min()
    # Measured at batch 64: plain-56 3.6e3, ResNet-56 8.1, pre-act 7.4.
    assert spread["plain"] > 100 * spread["resnet"]
    assert spread["resnet"] < 20 and spread["preact"] < 20


def test_variance_doubles_without_scaling_stays_flat_with_sqrt2_and_is_preserved_at_alpha_0():
    x = np.random.default_rng(0).normal(size=(64, 16, 16, 3)).astype("float32")
    growth = {}
    for scale in (None, "sqrt2", "learnable"):
        keras.utils.set_random_seed(0)
        model = reszoo.resnet(layers=(8,), block="basic", preact=True, norm=None, residual_scale=scale,
                              input_shape=(16, 16, 3))
        moments = propagation.block_second_moments(model, x)
        growth[scale] = moments[-1] ** (1 / 8)
        if scale == "learnable":
            np.testing.assert_allclose(moments, 1.0, rtol=1e-6)
    assert 1.5 < growth[None] < 2.5  # about 2 per block (1.8 measured over 16 blocks)
    assert 0.7 < growth["sqrt2"] < 1.2


def test_linear_products_and_the_two_weight_saddle():
    plain, residual = linear.product_spectra(width=16, depth=50, scale=0.05)
    assert plain.max() < 1e-30
    assert 0.5 < residual.min() and residual.max() < 2.0
    grad, hess = linear.hessian_at_origin(skip=False)
    np.testing.assert_allclose(grad, 0, atol=1e-8)
    np.testing.assert_allclose(np.linalg.eigvalsh(hess), [-1.0, 1.0], atol=1e-4)  # a saddle
    grad, hess = linear.hessian_at_origin(skip=True)
    np.testing.assert_allclose(grad, 0, atol=1e-8)
    assert linear.two_weight_loss(0.0, 0.0, skip=True) == 0.0  # the global minimum of a square
    assert linear.two_weight_loss(0.0, 0.0, skip=False) == 0.5
    np.testing.assert_allclose(hess, 0, atol=1e-4)


def test_experiment_command_writes_a_png_and_its_numbers(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.linear_toys", "--depth=20", f"--out_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "linear_toys.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads((tmp_path / "linear_toys.json").read_text())
    assert numbers["depth"] == 20 and numbers["no_skip"]["hessian_eigenvalues"] == [-1.0, 1.0]


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_residual_block_jacobian_stays_within_weyl_bounds(eps):
    from reszoo.lab import jacobian

    plain, scaled, residual = jacobian.block_spectra(eps, shape=(4, 4, 4))
    assert scaled.max() == pytest.approx(eps, rel=1e-3)
    assert residual.min() >= 1 - eps - 1e-3 and residual.max() <= 1 + eps + 1e-3
    assert plain.min() < 0.05 and plain.max() > 1.0  # a plain block collapses and stretches directions


@pytest.mark.slow
def test_degradation_and_block_deletion_on_the_digits():
    """Same recipe, 6 epochs: plain-56 trains far worse than plain-20, ResNet-56 about as well
    as ResNet-20 (degradation); deleting one block costs a trained ResNet little and a trained
    plain net most of its accuracy (the ensemble view)."""
    from experiments import data
    from reszoo.lab import depth

    x, y, x_test, y_test, classes = data.load()
    trained = depth.train_nets(x, y, ("plain20", "plain56", "resnet20", "resnet56"), epochs=6, num_classes=classes)
    final = {name: curve[-1] for name, (_, curve) in trained.items()}
    models = {name: model for name, (model, _) in trained.items()}
    # Measured at 8 epochs: plain 2.2% vs 89%; ResNet 0.0% vs 1.3%.
    assert final["plain56"] > final["plain20"] + 0.3
    assert final["resnet56"] < final["resnet20"] + 0.08
    resnet = depth.deletion_errors(models["resnet56"], x_test, y_test)
    plain = depth.deletion_errors(models["plain20"], x_test, y_test)
    assert len(resnet) == 1 + 27 and len(plain) == 1 + 7  # plain: only shape-keeping blocks can go
    median = lambda errors: float(np.median([v for k, v in errors.items() if k != "none"]))
    assert median(resnet) < resnet["none"] + 0.05
    assert median(plain) > 0.5


def test_filter_normalised_slices_around_a_trained_net():
    from experiments import data
    from reszoo.lab import depth, landscape

    x, y, _, _, classes = data.load()
    keras.utils.set_random_seed(0)
    model = reszoo.resnet(20, stem="cifar", base_width=8, input_shape=(8, 8, 1), num_classes=classes)
    depth.train_curve(model, x, y, epochs=3)
    direction = landscape.filter_normalized_direction(model)
    for v, d in zip(model.trainable_variables, direction):
        w = np.asarray(v)
        if w.ndim >= 2:  # each filter of the direction has its weight filter's norm
            axes = tuple(range(w.ndim - 1))
            norm = lambda a: np.sqrt(np.sum(np.square(a), axis=axes))
            np.testing.assert_allclose(norm(d), norm(w), rtol=1e-4)
        else:
            assert not d.any()
    before = [np.asarray(v).copy() for v in model.trainable_variables]
    alphas = np.linspace(-1, 1, 5)
    line = landscape.surface(model, x[:256], y[:256], alphas)
    assert line[2] == pytest.approx(landscape.loss_at(model, x[:256], y[:256]), rel=1e-5)
    assert line[2] == line.min() and line[0] > 2 * line[2] and line[-1] > 2 * line[2]  # a basin
    grid = landscape.surface(model, x[:256], y[:256], alphas[1:4], alphas[1:4])
    assert grid.shape == (3, 3) and grid[1, 1] == pytest.approx(line[2], rel=1e-5)
    for v, w in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(np.asarray(v), w)  # restored


def test_conv_adjoint_and_norm_match_the_dense_operator():
    from reszoo.lab import fixed_point

    kernel = np.random.default_rng(0).normal(size=(3, 3, 2, 3)).astype("float32")
    shape = (5, 5, 2)
    conv = keras.Sequential([keras.Input(shape), keras.layers.Conv2D(3, 3, padding="same", use_bias=False)])
    conv.layers[0].kernel.assign(kernel)
    matrix = jacobian.jacobian(conv, np.zeros(shape))
    x = np.random.default_rng(1).normal(size=(1, 5, 5, 3)).astype("float32")
    adjoint = keras.ops.convert_to_numpy(keras.ops.conv(x, fixed_point.conv_adjoint(kernel), padding="same"))
    np.testing.assert_allclose(adjoint.ravel(), matrix.T @ x.ravel(), rtol=1e-4, atol=1e-4)
    assert fixed_point.conv_norm(kernel, shape, iterations=300) == pytest.approx(
        np.linalg.svd(matrix, compute_uv=False)[0], rel=1e-3)


def test_iterated_tied_block_updates_shrink_only_when_the_branch_is_contractive():
    from experiments import fixed_point

    r = fixed_point.measure(steps=30, size=6, channels=4, batch=4)
    assert r["he_init"]["last_over_first"] > 10 and r["he_init"]["local_lipschitz"] > 1.5
    small = r["small_branch_eps=0.1"]
    assert 0.5 < small["last_over_first"] < 1.5  # a small branch only drifts
    for step in (1.0, 1.9):
        contractive = r[f"gradient_branch_step={step}"]
        assert contractive["max_step_ratio"] <= 1 + 1e-4  # nonexpansive T: no update grows
        assert contractive["last_over_first"] < 0.1
        assert contractive["local_lipschitz"] == pytest.approx(1.0, abs=0.01)


def test_training_experiments_read_cifar10_through_tfds():
    import tensorflow_datasets as tfds

    from experiments import data, degradation

    with tfds.testing.mock_data(num_examples=40):
        x, y, x_test, y_test, classes = data.load("cifar10", limit=24)
    assert x.shape == (24, 32, 32, 3) and x_test.shape == (24, 32, 32, 3) and classes == 10
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1, atol=1e-3)
    curves = degradation.run((x, y, x_test, y_test, classes), [8], epochs=2, base_width=4, verbose=0)
    assert set(curves) == {"plain8", "resnet8"} and all(len(c) == 2 for c in curves.values())
    for curve in curves.values():  # training errors on the 24 examples (one batch): multiples of 1/24
        assert all(0 <= e <= 1 and abs(e * 24 - round(e * 24)) < 1e-4 for e in curve), curve


def test_experiment_on_unprepared_cifar10_says_so_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.degradation", "--dataset=cifar10",
                           f"--data_dir={tmp_path}", f"--out_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "tfds build cifar10" in proc.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.glob("*.png"))


def test_continual_tasks_are_built_from_the_spec():
    from reszoo.lab import continual

    x = np.arange(10 * 4, dtype="float32").reshape(10, 2, 2, 1)
    y = np.arange(10) % 5
    task = continual.make_task("inverted:2-3", x, y, x[:5], y[:5])
    assert task.num_classes == 2 and sorted(set(task.y.tolist())) == [0, 1]
    np.testing.assert_array_equal(task.x[0], 39.0 - x[2])  # inverted against the data's maximum
    rotated = continual.make_task("rotated:all", x, y, x, y)
    np.testing.assert_array_equal(rotated.x[0], np.rot90(x[0], 1))
    for spec, message in [("blurred:all", "inverted or rotated"), ("3-9", "the data has classes"), ("x", "a range")]:
        with pytest.raises(ValueError, match=message):
            continual.make_task(spec, x, y, x, y)


@pytest.mark.slow
def test_with_a_frozen_backbone_nothing_is_forgotten_and_full_fine_tuning_forgets():
    """Exactly: the first task's accuracy after every later task equals the backbone's."""
    from reszoo.datasets import load_digits
    from reszoo.lab import continual

    (x, y), (x_test, y_test), _ = load_digits()
    tasks = [continual.make_task(s, x, y, x_test, y_test) for s in ("0-4", "5-9", "inverted:all")]
    build = lambda n: reszoo.create_model("resnet20", base_width=8, input_shape=(8, 8, 1), num_classes=n,
                                          preprocessing={"mean": [5.0], "std": [6.0]})
    results = continual.learn(build, tasks, epochs=3, say=lambda line: None)
    base = results["base_accuracy"]
    assert base > 0.8
    for method in ("head", "adapters"):
        assert [step[0] for step in results[method]["accuracy"]] == [base, base, base]  # exactly
        assert results[method]["accuracy"][2][1] == results[method]["accuracy"][1][1]
    full = results["full"]["accuracy"]
    assert full[2][0] < base - 0.1  # it forgets
    stored = {m: results[m]["stored_params"][1] for m in continual.METHODS}
    assert stored["head"] < stored["adapters"] < 0.2 * stored["full"]
    assert results["adapters"]["accuracy"][1][1] > results["head"]["accuracy"][1][1]


def test_landscape_comparison_slices_both_nets_through_their_trained_weights():
    from experiments import data
    from reszoo.lab import landscape

    x, y, _, _, classes = data.load(limit=256)
    steps = np.linspace(-0.5, 0.5, 3)
    results = landscape.compare(x, y, depth=8, epochs=1, steps=steps, samples=64, base_width=4, num_classes=classes)
    assert set(results) == {"resnet8", "plain8"}
    for name, r in results.items():
        one, two = np.asarray(r["1d"]), np.asarray(r["2d"])
        assert one.shape == (3,) and two.shape == (3, 3) and np.isfinite(two).all()
        # Both slices pass through the trained weights at their centre: the same loss.
        assert one[1] == pytest.approx(two[1, 1], rel=1e-5), name
        assert one[1] < one[0] or one[1] < one[2], name  # a step away raises the loss on one side at least
