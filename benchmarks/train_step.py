"""Training-step benchmark: a seed network on torch against the same network converted with
`fastconv.torch.convert`, one SGD step (forward, cross-entropy loss, backward, ``opt.step()``).

Both models start from the same weights and train in ``train()`` mode; one step of each in turn per
round (interleaved, so drifts of a shared machine hit both), ``--repeats`` rounds after
``--warmup`` rounds, medians; ``ratio`` is torch's median / fastconv's (> 1: fastconv is faster).
``--profile`` also prints torch.profiler's table of the converted model's step (self CPU time by
op, fastconv's Python functions included via record_function).

    python benchmarks/train_step.py --model lenet --batch 64
    python benchmarks/train_step.py --model resnet18 --batch 16 --repeats 5
    python benchmarks/train_step.py --model resnet18 --batch 16 --profile
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import fastconv
import fastconv.torch as fct
from fastconv import zoo


def _step(model, opt, x, target):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    opt.step()
    return loss


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="lenet", choices=zoo.model_names())
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    fastconv.set_num_threads(a.threads)
    model = zoo.build(a.model, image_size=a.image_size).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = fct.convert(copy.deepcopy(model)).train()
    shape = zoo.input_shape(a.model, a.batch, image_size=a.image_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    with torch.no_grad():
        ncls = model(x[:1]).shape[1]
    target = torch.randint(0, ncls, (a.batch,), generator=g)
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in (("torch", model), ("fast", fast))}
    models = {"torch": model, "fast": fast}
    times: dict[str, list[float]] = {"torch": [], "fast": []}
    for r in range(a.warmup + a.repeats):
        for k in ("torch", "fast"):
            t0 = time.perf_counter()
            _step(models[k], opts[k], x, target)
            dt = time.perf_counter() - t0
            if r >= a.warmup:
                times[k].append(dt)
    mt, mf = statistics.median(times["torch"]), statistics.median(times["fast"])
    print(
        f"{a.model} batch {a.batch} {shape[2]}x{shape[3]}, {a.threads} threads, {a.repeats} rounds: "
        f"torch {mt * 1e3:.1f} ms  fastconv {mf * 1e3:.1f} ms  ratio {mt / mf:.2f}x"
    )
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                _step(fast, opts["fast"], x, target)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


if __name__ == "__main__":
    main()
