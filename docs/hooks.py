"""mkdocs hooks: the parts of the site made from the code when it is built, so they cannot go
stale. Generated pages: the model index (with its plots) and one card per registered model,
one page per lab experiment (figure and numbers read from experiments/results), the flag
reference. Hand-written pages get their tables filled between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` markers by the same functions that fill README.md's
(scripts/readme_tables.py)."""

import importlib.util
import io
import json
import os
import pickle
import re
import sys

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = ("gradient_highway", "variance", "near_identity", "degradation", "ensemble", "landscape",
               "fixed_point", "linear_toys", "continual", "diagnostics")
_cache = {}


def _tables():
    if "tables" not in _cache:
        spec = importlib.util.spec_from_file_location("readme_tables", os.path.join(ROOT, "scripts", "readme_tables.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _cache["tables"] = module
    return _cache["tables"]


def _cards():
    """Every registered model's card, each model built once per site build (about three
    minutes), or read from the pickle that ``RESZOO_DOCS_CARDS`` names: cards made elsewhere
    from the same registry (the tests pass the ones their models give)."""
    if "cards" not in _cache:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        sys.path.insert(0, ROOT)
        import reszoo

        given = os.environ.get("RESZOO_DOCS_CARDS")
        if given:
            with open(given, "rb") as f:
                cards = pickle.load(f)
            if list(cards) != reszoo.list_models():
                raise ValueError(f"{given} holds cards of {len(cards)} models, not of the registry's "
                                 f"{len(reszoo.list_models())}")
        else:
            cards = {name: reszoo.model_card(name) for name in reszoo.list_models()}
        _cache["cards"] = cards
    return _cache["cards"]


def _macs(value):
    return "" if value is None else f"{value / 1e9:.2f}G" if value >= 1e9 else f"{value / 1e6:.1f}M"


def model_index(cards):
    """The model index: every registered model with its family, depth, size, cost,
    published result and feature levels, each linked to its card."""
    published = _tables()._published
    rows = ["| model | family | data | depth | params | MACs | published | feature levels |",
            "|---|---|---|---:|---:|---:|---|---|"]
    for name, card in cards.items():
        levels = ", ".join(f["level"] for f in card["features"])
        rows.append(f"| [`{name}`]({name}.md) | {card['family']} | {card['dataset']} | {card['depth']} | "
                    f"{card['params']:,} | {_macs(card['macs'])} | {published(card['published'])} | {levels} |")
    return "\n".join([
        "# Models", "",
        "Every registered model, built from the registry when this site was built "
        "(`reszoo.list_models()`, `reszoo.model_card(name)`). Parameters are trainable parameters; "
        "MACs are multiply-accumulates at the default input size; \"published\" is the paper's test "
        "error (C10 = CIFAR-10, + = with augmentation) or torchvision's ImageNet top-1.", "",
        "![CIFAR models: parameters against published error](cifar.png)",
        "![ImageNet models: MACs against top-1](imagenet.png)", "",
        *rows, ""])


def plots(cards):
    """The two plots of the index, as PNG bytes: parameters against published CIFAR-10 error,
    and MACs against torchvision's top-1, the families in their own colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({c["family"] for c in cards.values()})
    colour = {f: f"C{i}" for i, f in enumerate(families)}
    out = {}
    for key, metric, xlabel, ylabel, name in [
        ("cifar", lambda c: c["published"].get("cifar10+_error", c["published"].get("cifar10_error")),
         "trainable parameters", "published CIFAR-10 test error (%)", "cifar.png"),
        ("imagenet", lambda c: c["published"].get("imagenet_top1_torchvision"), "multiply-accumulates",
         "ImageNet top-1 (%, torchvision)", "imagenet.png"),
    ]:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for model, card in cards.items():
            y = metric(card)
            if y is None:
                continue
            x = card["params"] if key == "cifar" else card["macs"]
            ax.scatter(x, y, color=colour[card["family"]], s=40)
            ax.annotate(model, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        for family in families:
            ax.scatter([], [], color=colour[family], label=family)
        ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel,
               title="CIFAR-10: size against error" if key == "cifar" else "ImageNet: cost against accuracy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        out[name] = buffer.getvalue()
    return out


def model_card_page(name, card):
    """One model's card: paper, numbers, the call that builds it, its configuration, its
    feature levels, and what its weights can come from."""
    from reszoo import get_spec, hub, weights

    spec = get_spec(name)
    keras_names = [k for k, (reg, _) in weights.KERAS_APPLICATIONS.items() if reg == name]
    published = _tables()._published(card["published"]) or "none in the paper"
    lines = [f"# {name}", "", f"{spec.paper}.", "", "| | |", "|---|---|",
             f"| family | {card['family']} |", f"| depth | {card['depth']} |",
             f"| input | {' x '.join(map(str, card['input_shape']))} |", f"| classes | {card['num_classes']} |",
             f"| trainable parameters | {card['params']:,} |", f"| multiply-accumulates | {_macs(card['macs'])} |",
             f"| published | {published} |"]
    if card.get("notes"):
        lines += ["", card["notes"].capitalize() + "."]
    config = ", ".join(f"{k}={v!r}" for k, v in card["config"].items())
    lines += ["", "## Build it", "", "```python", "import reszoo", "",
              f'model = reszoo.create_model("{name}")', f"# the same: reszoo.{spec.builder.__name__}({config})",
              f'backbone = reszoo.create_model("{name}", features_only=True)  # any input size', "```",
              "", "## Feature levels", "", "| level | stage | layer | channels | stride |", "|---|---:|---|---:|---:|"]
    lines += [f"| {f['level']} | {f['stage']} | `{f['layer']}` | {f['channels']:,} | {f['stride']} |"
              for f in card["features"]]
    lines += ["", "## Weights", "", "`reszoo.create_model(\"" + name + "\", weights=...)` loads a training run "
              "folder, a `.keras` or `.weights.h5` file of this architecture (a new classifier for other "
              "classes)" + (f", keras.applications' {' / '.join(keras_names)} `.h5` files (the "
              "`variant=\"keras\"` layout is then chosen for you), or `weights=\"imagenet\"`, which fetches "
              "them" if keras_names else "") + "."]
    published = [(tag, entry) for tag, entry in hub.table().items() if entry["architecture"] == name]
    if published:
        lines += ["", "Published weights by name (timm's; `weights=\"timm/TAG\"`, downloaded once into the "
                  "Hugging Face cache; the model then takes timm's padding and preprocessing):", "",
                  "| weights | ImageNet top-1 / top-5 | eval size, crop | trained at | licence |",
                  "|---|---:|---|---:|---|"]
        for tag, entry in sorted(published, key=lambda t: -t[1].get("imagenet", {}).get("top1", 0)):
            found = entry.get("imagenet")
            score = f"{found['top1']:.2f}% / {found['top5']:.2f}%" if found else "not listed"
            evaluated = f"{found['img_size']}, {found['crop_pct']:g}" if found else ""
            lines.append(f"| `timm/{tag}` | {score} | {evaluated} | {entry['input_size'][-1]} | "
                         f"{entry.get('license', '?')} |")
    return "\n".join(lines) + "\n"


def _summary(value):
    """A leaf of a results JSON in a few words: numbers, and the size and range of lists."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        flat = [v for v in _flatten_list(value) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not flat:
            return ", ".join(map(str, value))[:80]
        shape = "x".join(map(str, _shape(value)))
        return f"{shape} values, from {min(flat):.4g} to {max(flat):.4g}" if len(flat) > 6 else \
            ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat)
    return str(value)


def _flatten_list(value):
    for v in value:
        if isinstance(v, list):
            yield from _flatten_list(v)
        else:
            yield v


def _shape(value):
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _leaves(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, value


def lab_page(name):
    """An experiment's page: the claim and command (its module docstring), its figure, and
    its numbers as the committed JSON holds them."""
    with open(os.path.join(ROOT, "experiments", f"{name}.py")) as f:
        doc = re.search(r'"""(.*?)"""', f.read(), re.S).group(1)
    with open(os.path.join(ROOT, "experiments", "results", f"{name}.json")) as f:
        numbers = json.load(f)
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
    title = _title(paragraphs[0])
    claim = paragraphs[0][len(title.split(": ", 1)[0]) + 1:].strip()
    commands = [line.strip() for line in doc.splitlines() if line.strip().startswith("python -m")]
    rows = ["| result | value |", "|---|---|"] + [
        f"| `{key}` | {_summary(value)} |" for key, value in _leaves(numbers) if key]
    return "\n".join([
        f"# {title}", "", claim[:1].upper() + claim[1:], "",
        *[p for p in paragraphs[1:] if not p.startswith("python -m")], "",
        "```", *commands, "```", "", f"![{title.strip()}]({name}.png)", "",
        f"The numbers of the committed run (`experiments/results/{name}.json`):", "", *rows, ""])


def _title(paragraph):
    """ "Experiment 4: degradation" from "Experiment 4, degradation (He et al. ...): ..." """
    number, _, rest = paragraph.partition(", ")
    subject = re.split(r" \(|:", rest, maxsplit=1)[0]
    return f"{number}: {subject}"


def _doc(name):
    with open(os.path.join(ROOT, "experiments", f"{name}.py")) as f:
        return " ".join(re.search(r'"""(.*?)"""', f.read(), re.S).group(1).split("\n\n")[0].split())


def lab_index():
    lines = ["# The lab", "", "Each experiment measures a claim of residual learning. Its command writes a "
             "figure and the JSON of its numbers to `experiments/results/`; the committed default runs "
             "are shown here, and a test checks each claim at small scale with a fixed seed.", ""]
    for name in EXPERIMENTS:
        lines.append(f"- [{_title(_doc(name))}]({name}.md)")
    return "\n".join(lines) + "\n"


def flags_page():
    return "# Training flags\n\n`python -m training.train` (or `reszoo-train`) takes these flags; a bad " \
           "value gives one line and exit code 2.\n\n" + _tables().flag_table() + "\n"


def on_files(files, config):
    cards = _cards()
    generated = {"models/index.md": model_index(cards), "lab/index.md": lab_index(),
                 "reference/flags.md": flags_page()}
    generated.update({f"models/{name}.md": model_card_page(name, card) for name, card in cards.items()})
    generated.update({f"lab/{name}.md": lab_page(name) for name in EXPERIMENTS})
    binary = {f"models/{name}": data for name, data in plots(cards).items()}
    for name in EXPERIMENTS:
        with open(os.path.join(ROOT, "experiments", "results", f"{name}.png"), "rb") as f:
            binary[f"lab/{name}.png"] = f.read()
    for path, content in {**generated, **binary}.items():
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    """Fill the generated tables of hand-written pages, as README's are filled."""
    tables = _tables()
    return tables.render(markdown, tables.tables())
