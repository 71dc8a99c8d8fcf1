"""``fastconv bench --model NAME --train``: one full training step of a seed network (forward,
cross-entropy loss, backward, SGD update with momentum), torch's model against the same model
converted with `fastconv.torch.convert`.

Both start from the same weights (`fastconv.zoo.build`, converted as a deep copy), in ``train()``
mode, each with its own ``torch.optim.SGD`` (same learning rate and momentum), on the same input
and targets every step. One untimed step each first (the converted model prepares its plans);
then ``repeats`` rounds of one step each, the order alternating per round, with ``cooldown``
seconds of rest before every step so the spinning thread pool of one does not take the cores of
the other (DESIGN.md). Times are medians per step. As a check that both train the same model, the
losses of every step are kept: the two trajectories agree to float32 rounding (``loss_rel_diff``:
the largest difference over the largest loss, as the error columns scale by the largest value);
torch's RNG is seeded the same before the k-th step of either model, so Dropout draws the same masks.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

# a batch per model that makes one step last ~0.1-3 s on 2 cores (the issue's: LeNet 64, ResNet-18 16)
DEFAULT_BATCH = {"lenet": 64, "alexnet": 8, "nin": 8, "vgg11": 4, "resnet18": 16, "inception": 16, "densenet": 16}
LR, MOMENTUM = 0.01, 0.9


@dataclass(frozen=True)
class TrainTiming:
    """Medians of interleaved training steps: torch's model vs the converted one."""

    model: str
    batch: int
    threads: int
    input_shape: tuple[int, ...]
    clock: str  # "wall" or "cpu" (the calling thread's CPU time)
    lr: float
    momentum: float
    torch_s: float  # median seconds per step, original model
    fastconv_s: float  # median seconds per step, converted model
    speedup: float  # torch_s / fastconv_s (> 1: the converted model trains faster)
    torch_steps_per_s: float
    fastconv_steps_per_s: float
    torch_losses: list[float]  # loss of every step, warm-up included
    fastconv_losses: list[float]
    loss_rel_diff: float  # max over steps of |loss_fastconv − loss_torch|, over torch's largest loss
    torch_times: list[float]
    fastconv_times: list[float]

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line: ``lenet train step batch 64 (64x1x28x28), 2 threads: torch 15.0 ms (66.67 steps/s),
        fastconv 10.0 ms (100.00 steps/s), 1.50x (losses agree to 1.0e-07 relative over 6 steps)``."""
        shape = "x".join(map(str, self.input_shape))
        return (
            f"{self.model} train step batch {self.batch} ({shape}), {self.threads} threads"
            + (", CPU time" if self.clock == "cpu" else "")
            + ": "
            f"torch {_s(self.torch_s)} ({self.torch_steps_per_s:.2f} steps/s), "
            f"fastconv {_s(self.fastconv_s)} ({self.fastconv_steps_per_s:.2f} steps/s), {self.speedup:.2f}x "
            f"(losses agree to {self.loss_rel_diff:.1e} relative over {len(self.torch_losses)} steps)"
        )


def _s(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def time_train_step(
    name: str,
    batch: int | None = None,
    threads: int = 2,
    repeats: int = 5,
    *,
    image_size: int | None = None,
    seed: int = 0,
    cooldown: float = 0.1,
    lr: float = LR,
    momentum: float = MOMENTUM,
    clock: Callable[[], float] = time.perf_counter,
) -> TrainTiming:
    """Time one training step of seed network ``name`` (`fastconv.zoo.MODELS`), torch vs converted
    (see the module doc); ``batch`` defaults to `DEFAULT_BATCH`. Thread counts of torch and fastconv
    are set to ``threads`` and restored afterwards. ``clock=time.thread_time`` times the calling
    thread's CPU time (``threads=1`` only: torch runs a CPU backward on the calling thread), which
    other processes on a shared machine disturb much less."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import fastconv
    from fastconv import torch as fctorch
    from fastconv import zoo

    batch = DEFAULT_BATCH.get(name, 8) if batch is None else batch
    if batch < 1 or repeats < 1 or threads < 1:
        raise ValueError(f"need batch >= 1, repeats >= 1, threads >= 1; got {batch}, {repeats}, {threads}")
    model = zoo.build(name, image_size=image_size, seed=seed).train()
    fast = fctorch.convert(model).train()  # a deep copy: the same initial weights
    classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    g = torch.Generator().manual_seed(seed + 2)
    x = torch.randn(*zoo.input_shape(name, batch, image_size=image_size), generator=g)
    target = torch.randint(0, classes, (batch,), generator=g)
    models = {"torch": model, "fastconv": fast}
    opts = {k: torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum) for k, m in models.items()}
    losses: dict[str, list[float]] = {"torch": [], "fastconv": []}
    times: dict[str, list[float]] = {"torch": [], "fastconv": []}

    def step(key: str) -> float:
        m, opt = models[key], opts[key]
        # the k-th step of either model draws the same dropout masks (LeNet, AlexNet, VGG have Dropout)
        torch.manual_seed(seed + 1000 + len(losses[key]))
        t0 = clock()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(m(x), target)
        loss.backward()
        opt.step()
        dt = clock() - t0
        losses[key].append(float(loss.detach()))
        return dt

    old = (torch.get_num_threads(), fastconv.get_num_threads())
    torch.set_num_threads(threads)
    fastconv.set_num_threads(threads)
    try:
        for key in models:  # warm-up (plans prepared, buffers touched), untimed
            step(key)
        for r in range(repeats):
            for key in ("torch", "fastconv") if r % 2 == 0 else ("fastconv", "torch"):
                time.sleep(cooldown)
                times[key].append(step(key))
    finally:
        torch.set_num_threads(old[0])
        fastconv.set_num_threads(old[1])
    scale = max(map(abs, losses["torch"])) or 1.0
    diff = max(abs(a - b) for a, b in zip(losses["torch"], losses["fastconv"])) / scale
    t_torch, t_fast = statistics.median(times["torch"]), statistics.median(times["fastconv"])
    return TrainTiming(
        name,
        batch,
        threads,
        tuple(x.shape),
        "cpu" if clock is time.thread_time else "wall",
        lr,
        momentum,
        t_torch,
        t_fast,
        t_torch / t_fast,
        1 / t_torch,
        1 / t_fast,
        losses["torch"],
        losses["fastconv"],
        diff,
        times["torch"],
        times["fastconv"],
    )
