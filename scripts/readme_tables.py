"""Regenerate README.md's model and flag tables: ``python scripts/readme_tables.py``.

Each table sits between its markers; tests/test_readme.py fails if one is stale.
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
        card = reszoo.model_card(name, model=build(name))
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


def render(text, tables):
    """Replace each ``<!-- NAME:start -->...<!-- NAME:end -->`` block with ``tables[NAME]``."""
    for name, table in tables.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no {start} ... {end} block")
        text = pattern.sub(lambda _: f"{start}\n{table}\n{end}", text)
    return text


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, os.path.dirname(README))
    with open(README) as f:
        text = f.read()
    with open(README, "w") as f:
        f.write(render(text, {"models": model_table(), "flags": flag_table()}))
    print(f"updated {README}")
