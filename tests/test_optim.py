"""The recipes' schedules and optimizers (reszoo.optim): step, cosine and warm-up values, AdamW
decaying kernels only, learning-rate multipliers."""

import numpy as np


def test_schedule_step_cosine_and_warmup_values():
    from reszoo.optim import Schedule

    step = Schedule(0.1, 1000, "step", boundaries=[500, 750], warmup_steps=10, warmup="constant")
    values = [float(step(s)) for s in (0, 9, 10, 499, 500, 749, 750, 999)]
    np.testing.assert_allclose(values, [0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    cosine = Schedule(0.2, 110, "cosine", warmup_steps=10)
    np.testing.assert_allclose([float(cosine(s)) for s in (0, 4, 10, 60, 110)],
                               [0.02, 0.1, 0.2, 0.1, 0.0], rtol=1e-5, atol=1e-7)
    assert Schedule.from_config(step.get_config()).get_config() == step.get_config()


def test_adamw_decays_kernels_only_and_lr_multipliers_scale_updates():
    import reszoo
    from reszoo import optim

    model = reszoo.create_model("resnet20", base_width=4)
    optimizer = optim.make_optimizer("adamw", 0.1, weight_decay=0.5, model=model)
    before = [v.numpy().copy() for v in model.trainable_variables]
    optimizer.apply([np.zeros(v.shape, "float32") for v in model.trainable_variables], model.trainable_variables)
    for v, b in zip(model.trainable_variables, before):
        if optim.is_kernel(v):
            np.testing.assert_allclose(v.numpy(), b * (1 - 0.1 * 0.5), rtol=1e-6)
        else:
            np.testing.assert_array_equal(v.numpy(), b)

    fc = model.get_layer("fc").kernel
    sgd = optim.make_optimizer("sgd", 0.1, momentum=0.0, lr_multipliers={fc.path: 0.25})
    before = [v.numpy().copy() for v in model.trainable_variables]
    sgd.apply([np.ones(v.shape, "float32") for v in model.trainable_variables], model.trainable_variables)
    for v, b in zip(model.trainable_variables, before):
        np.testing.assert_allclose(b - v.numpy(), 0.025 if v is fc else 0.1, rtol=1e-5)
