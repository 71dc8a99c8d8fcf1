"""Train small CNNs on real handwritten digits three ways — torch, the same model converted with
`fastconv.torch.convert`, and the NumPy path (`fastconv.nn` + the layers' ``backward``) — from
the same initial weights, on the same batches, and compare accuracy and time.

Data: scikit-learn's ``load_digits`` (1,797 8x8 grey images, 16 levels; the file ships inside the
scikit-learn wheel, nothing is downloaded). Each image is upsampled 3x by nearest neighbour to
24x24 and zero-padded by 2 to 28x28 (MNIST's layout: the digit in a 20-24 px box with a margin),
scaled to [0, 1], then standardised with the training set's mean and standard deviation. The
split is fixed: ``train_test_split(test_size=0.25, random_state=0, stratify=target)`` → 1,347
training and 450 test images.

Models (torch modules built under ``torch.manual_seed(seed)``; the other two variants copy those
weights):

* ``lenet`` — seed 001's MNIST ``Net`` itself (``fastconv.zoo.LeNet``): conv 1→10 5x5, max pool 2,
  ReLU, conv 10→20 5x5, Dropout2d(0.5), max pool 2, ReLU, fc 320→10, log-softmax; torch's
  default initialisation. The NumPy variant is ``fastconv.nn.lenet(like=...)`` (the same layers;
  the log-softmax left to the loss, which gives the same loss and gradients). Its Dropout2d
  draws masks from NumPy's generator, not torch's: from the first step its losses differ from
  torch's by dropout, not rounding, so its trajectory column says so instead of a number.
* ``vgg`` — seed 003's VGG blocks (3x3 convs with padding 1 and ReLU, then a 2x2 max pool),
  narrowed to this dataset: two convs of 16, two of 32, two of 64 channels (28→14→7→3), fc
  576→128→10; He-initialised (zero biases), as VGG nets are trained.

Schedule (the same for every variant): SGD, lr 0.01, momentum 0.9, batch 32, 10 epochs for lenet
and 8 for vgg, the training set shuffled each epoch by ``numpy.random.default_rng(seed)``;
cross-entropy loss.

Each (model, variant) trains in its own fresh Python process (no thread pool of one variant
spins while another is timed), with ``--threads`` threads for fastconv, BLAS and torch. Reported:
test accuracy after the last epoch, wall time of the whole training loop, the median time of one
step (forward, loss, backward, update) and its speed against torch's (torch's median step time
over the variant's: > 1 is faster than torch), the final epoch's mean training loss, the machine's
1-minute load average when the variant finished (timings on a shared machine mean little
without it), and how far the variant's losses over the first 20 steps are from torch's (max
relative difference: float32 rounding of differently ordered sums, grown through the momentum
steps; later steps drift apart chaotically, as any two float32 implementations do — see
tests/test_seed_training.py for how far torch's own float32 runs drift).

    python benchmarks/train_digits.py                 # both models, 2 threads
    python benchmarks/train_digits.py --models lenet --epochs 3 --threads 1
    python benchmarks/train_digits.py --epochs 1 --limit 256   # a smoke run (tests/test_train_digits.py)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

VARIANTS = ("torch", "converted", "numpy")
MODELS = ("lenet", "vgg")
TRAJECTORY_STEPS = 20


def load_data(seed: int = 0, limit: int | None = None):
    """``(x_train, x_test, y_train, y_test)``: float32 (N, 1, 28, 28), standardised; int64 labels.
    ``limit``: keep the first ``limit`` training and ``limit // 3`` test images (smoke runs)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.kron(d.images, np.ones((3, 3)))  # 8x8 → 24x24, nearest neighbour
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None] / 16.0  # → 28x28 in [0, 1]
    xtr, xte, ytr, yte = train_test_split(
        x.astype(np.float32), d.target.astype(np.int64), test_size=0.25, random_state=seed, stratify=d.target
    )
    if limit is not None:
        xtr, ytr, xte, yte = xtr[:limit], ytr[:limit], xte[: max(1, limit // 3)], yte[: max(1, limit // 3)]
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, (xte - mean) / std, ytr, yte


def build(name: str, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if name == "lenet":
        from fastconv import zoo

        return zoo.lenet()
    if name == "vgg":
        layers: list[nn.Module] = []
        c = 1
        for width in (16, 32, 64):
            layers += [
                nn.Conv2d(c, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            c = width
        model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 3 * 3, 128), nn.ReLU(), nn.Linear(128, 10))
        for m in model:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                # He initialisation: under torch's default (±1/√fan_in) the signal shrinks through
                # six ReLU convs and the net does not start learning within a few epochs
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        return model
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")


def train_one(
    model_name: str, variant: str, epochs: int, threads: int, seed: int, lr: float, batch: int, limit: int | None = None
) -> dict:
    """Train one (model, variant) in this process; the result row as a dict."""
    import torch

    import fastconv

    torch.set_num_threads(threads)
    fastconv.set_num_threads(threads)
    xtr, xte, ytr, yte = load_data(seed, limit)
    model = build(model_name, seed).train()

    if variant == "numpy":
        from fastconv import nn as fnn

        net = (fnn.lenet(like=model) if model_name == "lenet" else fnn.Sequential.from_torch(model)).train()
        opt = fnn.SGD(net, lr=lr, momentum=0.9)

        def step(xb, yb):
            loss, dlogits = fnn.cross_entropy(net(xb), yb)
            opt.zero_grad()
            net.backward(dlogits, input_grad=False)
            opt.step()
            return loss

        def predict(x):
            return net.eval()(x)
    else:
        if variant == "converted":
            import fastconv.torch as fct

            model = fct.convert(model)
        topt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        loss_fn = torch.nn.functional.cross_entropy

        def step(xb, yb):
            loss = loss_fn(model(torch.from_numpy(xb)), torch.from_numpy(yb))
            topt.zero_grad()
            loss.backward()
            topt.step()
            return loss.item()

        def predict(x):
            model.eval()
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()

    rng = np.random.default_rng(seed)
    losses, step_times, epoch_losses = [], [], []
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(xtr))
        epoch = []
        for i in range(0, len(order), batch):
            b = order[i : i + batch]
            xb, yb = np.ascontiguousarray(xtr[b]), ytr[b]
            s = time.perf_counter()
            loss = step(xb, yb)
            step_times.append(time.perf_counter() - s)
            epoch.append(loss)
        losses += epoch
        epoch_losses.append(float(np.mean(epoch)))
    wall = time.perf_counter() - t0
    accuracy = float(np.mean(predict(xte).argmax(1) == yte))
    return dict(
        model=model_name,
        variant=variant,
        accuracy=accuracy,
        wall_s=wall,
        steps=len(step_times),
        load=os.getloadavg()[0],
        step_ms=1e3 * statistics.median(step_times),
        final_loss=epoch_losses[-1],
        first_losses=losses[:TRAJECTORY_STEPS],
        threads=threads,
        epochs=epochs,
        own_dropout=variant == "numpy" and model_name == "lenet",
    )


def machine() -> str:
    import platform

    import torch

    import fastconv

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs; torch {torch.__version__}, fastconv {fastconv.__version__}"


def table(rows: list[dict]) -> list[str]:
    """The report: one line per (model, variant), speed and trajectory against the torch row."""
    head = (
        f"{'model':6s} {'variant':9s} {'epochs':>6s} {'steps':>5s} {'test acc':>8s} {'train s':>8s} "
        f"{'ms/step':>8s} {'vs torch':>8s} {'final loss':>10s} {'loss Δ first 20':>15s} {'load':>5s}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        base = next((b for b in rows if b["model"] == r["model"] and b["variant"] == "torch"), None)
        speed = f"{base['step_ms'] / r['step_ms']:.2f}x" if base else "-"
        delta = "-"
        if r.get("own_dropout"):
            delta = "own dropout"
        elif base and r is not base:
            a, b = np.array(r["first_losses"]), np.array(base["first_losses"])
            delta = f"{np.max(np.abs(a - b) / np.abs(b)):.1e}"
        lines.append(
            f"{r['model']:6s} {r['variant']:9s} {r['epochs']:6d} {r['steps']:5d} {r['accuracy']:8.3f} "
            f"{r['wall_s']:8.2f} {r['step_ms']:8.2f} {speed:>8s} {r['final_loss']:10.4f} {delta:>15s} {r['load']:5.1f}"
        )
    lines.append("vs torch: torch's median ms/step over this variant's (> 1: faster than torch)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        default=None,
        help="epochs per model, one value for all or one per model (default: lenet 10, vgg 8)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="train on the first N training images (smoke runs)")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)  # a worker process
    args = ap.parse_args(argv)
    default_epochs = {"lenet": 10, "vgg": 8}
    epochs = args.epochs or [default_epochs[m] for m in args.models]
    if len(epochs) == 1:
        epochs = epochs * len(args.models)
    if len(epochs) != len(args.models):
        ap.error("--epochs takes one value, or one per model")
    common = [
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        "--lr",
        str(args.lr),
        "--batch",
        str(args.batch),
    ]
    common += ["--limit", str(args.limit)] if args.limit is not None else []

    if args.one:
        m, v = args.one
        row = train_one(m, v, epochs[args.models.index(m)], args.threads, args.seed, args.lr, args.batch, args.limit)
        print(json.dumps(row))
        return 0

    sizes = "1347 train / 450 test"
    if args.limit is not None:
        sizes = f"first {args.limit} train / {max(1, args.limit // 3)} test"
    print(
        f"train_digits: sklearn load_digits 8x8 → 28x28, {sizes}; SGD lr {args.lr} momentum 0.9, "
        f"batch {args.batch}, seed {args.seed}; {args.threads} thread(s)"
    )
    print(machine())
    rows = []
    failed = 0
    for m, ep in zip(args.models, epochs):
        for v in args.variants:
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--one",
                m,
                v,
                "--models",
                m,
                "--epochs",
                str(ep),
                *common,
            ]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                print(f"{m} {v}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                failed += 1
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {m:6s} {v:9s} done: {rows[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    print()
    print("\n".join(table(rows)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
