"""The PyTorch peer of benchmarks/train_step.py, in a process of its own: PyTorch 2.14 and
TensorFlow 2.21 in one process die with a segfault at the first ``torch.optim.SGD`` (torch
imports torch._dynamo). ``common.ProcessPeer`` starts it; it builds the net, then
runs ``--steps`` training steps each time it reads a line on stdin and answers a line.
"""

import argparse
import os
import sys


def torch_cifar_resnet(blocks=9, classes=10):
    """The CIFAR ResNet of He et al. 2015 in PyTorch (option A shortcuts), ``blocks`` per stage:
    ResNet-(6n+2) for n = ``blocks``, ResNet-56 by default."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
            if self.extra:
                s = nn.functional.pad(s, (0, 0, 0, 0, 0, self.extra))
            return torch.relu(y + s)

    layers, cin = [], 16
    for stage, cout in enumerate((16, 32, 64)):
        for b in range(blocks):
            layers.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
            cin = cout
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))


def torch_runner(model, batch, steps, shape, classes, dtype="float32"):
    import torch

    torch.set_num_threads(os.cpu_count())
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, shape[2], shape[0], shape[1]).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = dtype == "bfloat16"

    def run():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    try:
        import torch
    except ImportError as err:
        print(f"error {err}", flush=True)
        return
    run = torch_runner(torch_cifar_resnet(), args.batch, args.steps, (32, 32, 3), 10, args.dtype)
    print(f"ready torch {torch.__version__}", flush=True)
    for _ in sys.stdin:
        run()
        print("done", flush=True)


if __name__ == "__main__":
    main()
