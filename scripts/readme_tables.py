"""Regenerate README.md's generated tables: ``python scripts/readme_tables.py``.

Each table sits between its markers; tests/test_readme.py fails if one is stale. The
documentation site fills the same markers of its pages at build time (docs/hooks.py).
"""

import os
import re
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _published(published):
    labels = {"cifar10_error": "C10 {}%", "cifar10+_error": "C10+ {}%", "cifar100_error": "C100 {}%",
              "cifar100+_error": "C100+ {}%", "imagenet_top1_torchvision": "top-1 {}% (tv)"}
    return ", ".join(labels[k].format(v) for k, v in published.items())


def model_table(build=None):
    import reszoo

    build = build or reszoo.create_model
    rows = ["| model | family | data | depth | params | MACs | published |",
            "|---|---|---|---:|---:|---:|---|"]
    for name in reszoo.list_models():
        card = reszoo.model_card(build(name))
        macs = card["macs"]
        macs = f"{macs / 1e9:.2f}G" if macs >= 1e9 else f"{macs / 1e6:.1f}M"
        rows.append(f"| `{name}` | {card['family']} | {card['dataset']} | {card['depth']} | "
                    f"{card['params']:,} | {macs} | {_published(card['published'])} |")
    return "\n".join(rows)


def flag_table():
    from training import flags as run_flags
    import training.train  # noqa: F401  (defines the flags)

    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for flag in sorted(run_flags.FLAGS.get_key_flags_for_module(run_flags), key=lambda f: f.name):
        default = flag.default_as_str if flag.default not in (None, [], "") else ""
        rows.append(f"| `--{flag.name}` | {default.strip(chr(39))} | {flag.help.replace('|', '/')} |")
    return "\n".join(rows)


def continual_table():
    """Experiment 9's committed numbers (experiments/results/continual.json)."""
    import json

    with open(os.path.join(os.path.dirname(README), "experiments", "results", "continual.json")) as f:
        r = json.load(f)
    names = {"0-4": "digits 0-4 (first task)", "5-9": "digits 5-9", "inverted:all": "inverted digits"}
    tasks = r["tasks"]
    rows = ["| method | " + " | ".join(names.get(t, t) for t in tasks) + " | trained per task | stored per task |",
            "|---|" + "---:|" * (len(tasks) + 2)]
    percent = lambda values: [f"{100 * v:.1f}%" for v in values]
    rows.append("| backbone alone | " + " | ".join(percent([r["base_accuracy"]]) + [""] * (len(tasks) - 1))
                + f" | {r['head']['trained_params'][0]:,} | {r['head']['stored_params'][0]:,} |")
    labels = {"head": "new head, backbone frozen", "adapters": "residual adapters (parallel)",
              "full": "full fine-tuning, one shared network"}
    for method, label in labels.items():
        m = r[method]
        rows.append(f"| {label} | " + " | ".join(percent(m["accuracy"][-1])) +
                    f" | {max(m['trained_params'][1:]):,} | {max(m['stored_params'][1:]):,} |")
    return "\n".join(rows)


def segmentation_table():
    """examples/segmentation.py's committed numbers (examples/results/segmentation.json)."""
    import json

    with open(os.path.join(os.path.dirname(README), "examples", "results", "segmentation.json")) as f:
        r = json.load(f)
    return "\n".join([
        "| backbone | head | train / test canvases | epochs | pixel accuracy | mean IoU (11 classes) |",
        "|---|---|---:|---:|---:|---:|",
        f"| `{r['model']}` (width {r['base_width']}) | keras-hub DeepLabV3+ | {r['train_canvases']:,} / "
        f"{r['test_canvases']:,} | {r['epochs']} | {100 * r['pixel_accuracy']:.1f}% (background alone "
        f"{100 * r['background_share']:.1f}%) | {r['mean_iou']:.3f} |"])


def weights_table():
    """The best published ImageNet top-1 of each architecture's weights (reszoo/data's tables:
    timm's tags and keras.applications' files), with source and licence."""
    from reszoo import hub, weights

    best = {}
    for tag, entry in hub.table().items():
        found = entry.get("imagenet")
        arch = entry["architecture"]
        if found and (arch not in best or found["top1"] > best[arch][1]):
            best[arch] = (f"`timm/{tag}`", found["top1"], found["img_size"], entry.get("license", "?"))
    keras_table = weights.keras_weights_table()
    for architecture, (name, _) in weights.KERAS_APPLICATIONS.items():
        if name not in best:
            best[name] = ('`"imagenet"` (keras.applications)', keras_table["top1"][architecture], 224, "MIT")
    rows = ["| model | best weights | ImageNet top-1 | eval size | licence | all weights |", "|---|---|---:|---:|---|---:|"]
    import reszoo

    for name in sorted(best, key=lambda n: reszoo.list_models().index(n)):
        source, top1, size, licence = best[name]
        count = len(reszoo.list_weights(f"{name}.*")) + (name in weights.KERAS_APPLICATIONS_MODELS)
        rows.append(f"| `{name}` | {source} | {top1:.2f}% | {size} | {licence} | {count} |")
    return "\n".join(rows)


def recipes_table():
    """training/recipes.py: each recipe, the flags it sets, its source and published top-1."""
    from training import recipes

    rows = ["| recipe | flags it sets | source | published top-1 |", "|---|---|---|---:|"]
    for name, recipe in recipes.RECIPES.items():
        shown = [f"`{recipes.as_flag(flag, value)}`" for flag, value in recipe["flags"].items()]
        top1 = f"{recipe['top1']}%" if recipe["top1"] else ""
        rows.append(f"| `{name}` | {' '.join(shown)} | {recipe['source']} | {top1} |")
    return "\n".join(rows)


def recipe_parts_table():
    """experiments/recipe_parts.py's committed numbers (experiments/results/recipe_parts.json)."""
    import json

    with open(os.path.join(os.path.dirname(README), "experiments", "results", "recipe_parts.json")) as f:
        r = json.load(f)
    rows = [f"| {r['model']} on {r['dataset']}, {r['epochs']} epochs | flags | test accuracy, mean +- std "
            f"({len(r['seeds'])} seeds) | each seed |", "|---|---|---:|---|"]
    for name, v in r["variants"].items():
        flags = " ".join(f"`{f}`" for f in v["flags"]) or "(default job)"
        rows.append(f"| {name} | {flags} | {100 * v['mean']:.2f}% +- {100 * v['std']:.2f} | "
                    + ", ".join(f"{100 * a:.2f}" for a in v["accuracy"]) + " |")
    return "\n".join(rows)


def tables(build=None):
    """Every generated table, by marker name, as a callable."""
    return {"models": lambda: model_table(build), "flags": flag_table, "continual": continual_table,
            "segmentation": segmentation_table, "weights": weights_table, "recipes": recipes_table,
            "recipe_parts": recipe_parts_table}


def render(text, tables):
    """Replace each ``<!-- NAME:start -->...<!-- NAME:end -->`` block of ``text`` with
    ``tables[NAME]`` (a callable, called only for the blocks the text has)."""
    for name in re.findall(r"<!-- (\w+):start -->", text):
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        table = tables[name]()
        text = pattern.sub(lambda _: f"{start}\n{table}\n{end}", text)
    return text


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, os.path.dirname(README))
    with open(README) as f:
        text = f.read()
    from reszoo.io import atomic_write

    fresh = render(text, tables())

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(fresh)

    atomic_write(README, write)
    print(f"updated {README}")
