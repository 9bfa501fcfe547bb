"""The walk of ``reszoo.create_model(ARCH, weights="timm/TAG")`` through the library's modules:
every call from one module into another (each call site counted once, the model's construction
left out), the modules it visits, how often the tag is resolved, and any call that goes up a
floor (into a module that imports the caller's). timm's ``create_model`` parses the name once
and ``build_model_with_cfg`` loads once; so should reszoo.

    python -m benchmarks.weights_walk [--tag=resnet50.a1_in1k]

The weights are random, written by ``reszoo.hub.save_timm`` into a Hugging Face cache made for
the run (offline), laid out as the hub lays it out.
"""

import argparse
import os
import sys
import tempfile

from benchmarks import common  # noqa: F401  (quiets TensorFlow's start-up lines)


def _cache(tag, folder):
    import reszoo
    from reszoo import hub

    model = reszoo.create_model(hub.table()[tag]["architecture"], **hub.build_arguments(tag, {}))
    repo = os.path.join(folder, f"models--timm--{tag}")
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write("0" * 40)
    hub.save_timm(model, os.path.join(repo, "snapshots", "0" * 40))


def walk(tag):
    """``(calls, resolves)``: each call from one reszoo module into another during
    ``create_model(ARCH, weights="timm/TAG")`` as ``(caller module, callee module, function)``,
    in order, each call site once, below the builder left out; and the times ``hub.resolve`` ran."""
    from huggingface_hub import constants

    import reszoo
    from reszoo import hub

    calls, stack, seen, resolves = [], [], set(), []
    hidden = [None]  # the depth below which calls are not recorded (the builder, a call site seen)

    def profile(frame, event, arg):
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("reszoo"):
            return
        function = (module, frame.f_code.co_name)
        if event == "call":
            if function == ("reszoo.hub", "resolve"):
                resolves.append(1)
            if hidden[0] is None:
                caller = stack[-1] if stack else None
                if (caller, function) in seen or function == ("reszoo.weights", "build"):
                    hidden[0] = len(stack)
                else:
                    seen.add((caller, function))
                    if caller is not None and caller[0] != module:
                        calls.append((caller[0], module, function[1]))
            stack.append(function)
        elif event == "return" and stack:
            stack.pop()
            if hidden[0] == len(stack):
                hidden[0] = None

    with tempfile.TemporaryDirectory() as cache:
        saved = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = cache, True
        try:
            _cache(tag, cache)
            sys.setprofile(profile)
            try:
                reszoo.create_model(hub.table()[tag]["architecture"], weights=hub.PREFIX + tag)
            finally:
                sys.setprofile(None)
        finally:
            constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved
    return calls, len(resolves)


def upward(calls):
    """The calls that go up a floor: into a module that imports the caller's."""
    import importlib

    def imports(module):
        found = importlib.import_module(module)
        return {getattr(value, "__name__", None) for value in vars(found).values()}

    return [(a, b, f) for a, b, f in calls if a in imports(b)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="resnet50.a1_in1k")
    args = parser.parse_args()
    calls, resolves = walk(args.tag)
    modules = sorted({m for a, b, _ in calls for m in (a, b)})
    print(f"create_model(weights='timm/{args.tag}'): {len(calls)} calls between {len(modules)} modules "
          f"({', '.join(modules)}); the tag resolved {resolves} time(s); {len(upward(calls))} call(s) up a floor")
    for caller, callee, function in calls:
        print(f"  {caller} -> {callee}.{function}")


if __name__ == "__main__":
    main()
