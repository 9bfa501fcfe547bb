"""Regenerate README.md's model table from the registry: ``python scripts/readme_tables.py``.

The table sits between the markers below; tests/test_readme.py fails if it is stale.
"""

import os
import re
import sys

START, END = "<!-- models:start -->", "<!-- models:end -->"
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
        card = reszoo.model_card(name, model=build(name))
        macs = card["macs"]
        macs = f"{macs / 1e9:.2f}G" if macs >= 1e9 else f"{macs / 1e6:.1f}M"
        rows.append(f"| `{name}` | {card['family']} | {card['dataset']} | {card['depth']} | "
                    f"{card['params']:,} | {macs} | {_published(card['published'])} |")
    return "\n".join(rows)


def render(text, table):
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return pattern.sub(lambda _: f"{START}\n{table}\n{END}", text)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, os.path.dirname(README))
    with open(README) as f:
        text = f.read()
    with open(README, "w") as f:
        f.write(render(text, model_table()))
    print(f"updated {README}")
