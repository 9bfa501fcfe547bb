"""Classify images with an exported model: ``python -m training.predict --saved_model=DIR a.png b.jpg``.

DIR is a version folder (``saved_models/resnet20_digits/1``) or a model folder, whose highest
version is used. Prints the top classes of each image through the ``serving_bytes`` signature,
so it needs nothing from reszoo: a smoke test for an export, and a demo.
"""

import sys

from absl import app, flags, logging

from training.common import command, engines

flags.DEFINE_string("saved_model", None, "required: an exported version folder, or its model folder (latest version)")
flags.DEFINE_integer("top", 5, "classes to print per image (at most the export's top_k)", lower_bound=1)
FLAGS = flags.FLAGS


def predict(saved_model, images, top=5):
    """``[(path, [(name, score), ...]), ...]`` for image files, through ``serving_bytes``."""
    import tensorflow as tf

    serve = engines.saved_model(saved_model)
    results = []
    for path in images:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise ValueError(f"cannot read {path}: {err.strerror}") from None
        try:
            out = serve(image_bytes=tf.constant([data]))
        except tf.errors.InvalidArgumentError as err:
            raise ValueError(f"{path} cannot be decoded as an image ({command.error_reason(err)})") from None
        names = [n.decode() for n in out["top_k_names"].numpy()[0][:top]]
        scores = out["top_k_scores"].numpy()[0][:top].tolist()
        results.append((path, list(zip(names, scores))))
    return results


def main(argv):
    logging.set_verbosity(logging.ERROR)
    images = argv[1:]
    if FLAGS.saved_model is None:
        sys.stderr.write("predict: error: --saved_model is required (an exported version folder, or its model "
                         "folder)\n")
        sys.exit(2)
    if not images:
        sys.stderr.write("predict: error: give one or more image files after the flags\n")
        sys.exit(2)
    try:
        results = predict(FLAGS.saved_model, images, FLAGS.top)
    except ValueError as err:
        sys.stderr.write(f"predict: error: {err}\n")
        sys.exit(2)
    for path, top in results:
        print(path)
        for rank, (name, score) in enumerate(top, 1):
            print(f"  {rank}. {name:<24} {score:.4f}")


def cli():
    """``reszoo-predict`` and ``python -m training.predict``."""
    app.run(main, flags_parser=command.parser(sys.modules[__name__], __doc__, run_as="training.predict",
                                              args=" IMAGE [IMAGE ...]"))


if __name__ == "__main__":
    cli()
