"""The seed networks trained for 20 SGD steps (momentum 0.9) on torch and on fastconv
(`fastconv.torch.convert`), from the same initial weights, on the same batches and dropout masks.

What "agree to float32 rounding" means here, and the bounds:

* **float64** — both runs take the same 20 steps to float64 rounding: losses within a relative
  1e-10 at every step, every parameter and BatchNorm buffer within 1e-10 of its scale at the end
  (measured ≤ 3e-11, most nets ~1e-14). The bound is float64's unit roundoff (1.1e-16) grown by
  at most the ~1e4..1e6 that the float32 runs below show between one step's rounding and the
  trajectory's. This is the test that the gradients and updates are the *same functions*: a wrong
  gradient term of relative size 1e-8 anywhere would fail it.
* **float32** — differently ordered float32 sums differ by rounding: one step taken from the same
  (float64 trajectory's) weights gives losses ~1e-7 and gradients ~1e-6 relative apart from
  float64's, for fastconv and torch alike (fastconv's weight and bias gradients round less than
  torch's, its input gradients a few times more). Over 20 momentum steps the difference grows,
  and where an activation sits within rounding of a ReLU's kink or a max-pool tie, one run's
  gradient takes the other branch and the trajectories part by far more than a step's rounding.
  Torch is as sensitive as fastconv: its own float32 run from initial weights moved by ±1 ulp
  lands, on VGG-11, anywhere from 3.5e-4 to 3.4e-3 (of the first loss) away from the float64
  losses and 3e-3 to 3e-2 (of the scale) from the float64 weights. So each fastconv float32 run
  is held to that *envelope*: torch's float32 runs from the initial weights and from two ±1-ulp
  perturbations of them, each measured against the float64 trajectory, and
  ``err(fastconv32) ≤ 2 · max err(torch32 runs) + floor``. err is the largest loss difference
  over the steps divided by the first loss (the loss the steps remove: a relative difference of a
  loss near 0 means nothing), and, for the parameters, the largest difference divided by the
  parameter's scale, over the whole model (after a branch parts two runs, *which* parameters move
  most depends on the branch; how far, rounding explains). The factor 2 covers two
  implementations' rounding being of the same size but not equal; the floor (1e-4 for losses,
  1e-3 for parameters) is what a relative gradient error ε ~ 1e-5 on every step does to first
  order without any branch flip, summed over the ~10 steps a momentum of 0.9 carries: it changes
  the loss the steps remove (≤ the first loss) by ≲ 10ε of it, and a parameter by ≲ 10ε times
  how far the steps moved it (≤ its scale), with a factor 10 to spare.

  That holds for fastconv with ``direct`` convolutions, whose sums round as torch's do. With
  ``auto``, the 3x3 layers run Winograd F(4x4,3x3), which rounds ~40x more than torch's conv
  (README's accuracy table), and the factor is 2 · 40: on ResNet-18 (BatchNorm over 8 values in
  its last stage, batch 2) fastconv ``auto`` lands 6e-3 from the float64 losses where torch and
  fastconv ``direct`` land 2e-4, in 3 of 4 ±1-ulp starts (measured); the float64 runs, equal to
  5e-13, show it is rounding and not a different gradient.

Measured (batch 2, 20 steps; "env" is the largest of torch's three float32 runs):

    net       lr     loss      f64 loss f64 par | loss err: env  direct  auto | param err: env  direct  auto
    lenet     0.01   8.44→1.57  1e-14   4e-15   |   1.4e-05 2.9e-06 3.9e-05 |   1.3e-06 1.0e-06 3.7e-06
    alexnet   0.002  8.90→1.20  6e-14   2e-14   |   8.1e-06 2.1e-05 4.4e-06 |   2.5e-06 3.9e-06 8.6e-07
    vgg11     0.001  19.5→1.13  5e-13   4e-13   |   3.4e-03 5.4e-03 4.9e-03 |   2.9e-02 3.3e-02 2.9e-02
    nin       0.01   2.76→1.94  2e-14   4e-14   |   1.8e-03 6.8e-06 1.2e-05 |   4.6e-02 9.9e-06 1.9e-05
    resnet18  0.01   2.65→0.002 6e-13   2e-13   |   2.2e-04 2.2e-04 6.2e-03 |   1.2e-02 1.3e-02 9.7e-02
    densenet  0.01   2.84→0.046 3e-15   8e-16   |   1.3e-07 7.8e-08 7.1e-08 |   6.1e-07 4.8e-07 5.2e-07
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as fct  # noqa: E402
from fastconv import zoo  # noqa: E402

STEPS = 20
BATCH = 2
CLASSES = 10
FLOAT64_RTOL = 1e-10
LOSS_FLOOR = 1e-4
PARAM_FLOOR = 1e-3
SPREAD_FACTOR = 2.0  # algorithms that round as torch's conv does (direct sums)
# Winograd F(4x4,3x3) rounds ~40x more than torch's float32 conv (README, "Algorithms and their
# accuracy": max|y − ref|/max|ref| 1.4e-5 against torch's 3.7e-7 on the suite's 3x3 layers)
WINOGRAD_SPREAD_FACTOR = 2.0 * 1.4e-5 / 3.7e-7
# learning rates at which each net's loss falls over the 20 steps without blowing up (the zoo's
# He-initialised nets start with large logits; VGG-11 at 0.01 diverges to NaN within 7 steps)
SEED_NETS = {"lenet": 0.01, "alexnet": 0.002, "vgg11": 0.001, "nin": 0.01, "resnet18": 0.01, "densenet": 0.01}


def batches(name: str, steps: int = STEPS, distinct: int = 2, seed: int = 1) -> list:
    """``steps`` batches cycling over ``distinct`` random ones (a task the net can memorise)."""
    g = torch.Generator().manual_seed(seed)
    shape = zoo.input_shape(name, BATCH, small=True)
    few = [
        (torch.randn(*shape, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)) for _ in range(distinct)
    ]
    return [few[i % distinct] for i in range(steps)]


def train(model, data, lr: float, dtype) -> np.ndarray:
    """SGD with momentum 0.9; the torch seed is set before each step, so every run draws the same
    dropout masks. Returns the per-step losses."""
    model.to(dtype).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for step, (x, t) in enumerate(data):
        torch.manual_seed(1000 + step)
        loss = F.cross_entropy(model(x.to(dtype)), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return np.array(losses)


def nudge(model, seed: int) -> None:
    """Each float32 parameter moved by −1, 0 or +1 unit of float32 rounding (2⁻²⁴ relative), at
    random: a run from there shows how far rounding alone carries a float32 trajectory."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + torch.randint(-1, 2, p.shape, generator=g).to(p.dtype) * 2.0**-24)


def state(model) -> dict[str, torch.Tensor]:
    """Parameters and floating-point buffers (BatchNorm statistics) by name, as float64."""
    return {k: v.detach().double() for k, v in model.state_dict().items() if v.dtype.is_floating_point}


def param_errors(got: dict, ref: dict) -> dict[str, float]:
    return {k: float((got[k] - r).abs().max()) / max(float(r.abs().max()), 1e-30) for k, r in ref.items()}


def make_runs(name: str) -> dict:
    """A net's runs: torch and fastconv in float64; torch in float32 from the initial weights and
    from two ±1-ulp nudges of them (the envelope); fastconv in float32 with ``auto`` and
    ``direct`` convolutions. Each maps to (per-step losses, final `state`)."""
    base, data, lr = zoo.build(name, small=True), batches(name), SEED_NETS[name]
    # one thread each for fastconv and torch: small nets and batches, and runs that stay steady on
    # a loaded machine (idle thread pools spinning against each other cost more than the arithmetic)
    threads = fastconv.get_num_threads(), torch.get_num_threads()
    fastconv.set_num_threads(1)
    torch.set_num_threads(1)
    try:
        return {tag: run(base, data, lr, *how) for tag, how in RUNS.items()}
    finally:
        fastconv.set_num_threads(threads[0])
        torch.set_num_threads(threads[1])


RUNS = {  # tag: (dtype, algo — None for the torch model itself —, nudge seed or None)
    "torch64": (torch.float64, None, None),
    "fast64": (torch.float64, "auto", None),
    "torch32": (torch.float32, None, None),
    "torch32_ulp1": (torch.float32, None, 1),
    "torch32_ulp2": (torch.float32, None, 2),
    "fast32": (torch.float32, "auto", None),
    "fast32_direct": (torch.float32, "direct", None),
}


def run(base, data, lr: float, dtype, algo: str | None, nudged: int | None) -> tuple[np.ndarray, dict]:
    model = copy.deepcopy(base)
    if nudged is not None:
        nudge(model, nudged)
    if algo is not None:
        model = fct.convert(model, algo=algo)
    return train(model, data, lr, dtype), state(model)


@pytest.fixture(scope="module")
def runs():
    """`make_runs` once per net and module."""
    cache: dict = {}

    def get(name):
        if name not in cache:
            cache[name] = make_runs(name)
        return cache[name]

    return get


def test_the_seed_networks_are_the_six():
    assert set(SEED_NETS) <= set(zoo.model_names())
    assert len(SEED_NETS) == 6


@pytest.mark.parametrize("name", list(SEED_NETS))
def test_float64_trajectories_are_equal_to_rounding(name, runs):
    r = runs(name)
    ref, got = r["torch64"], r["fast64"]
    assert np.all(np.isfinite(ref[0])) and ref[0][-1] < ref[0][0]  # it learns: not a flat or broken run
    np.testing.assert_allclose(got[0], ref[0], rtol=FLOAT64_RTOL, atol=0)
    errors = param_errors(got[1], ref[1])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= FLOAT64_RTOL, f"{worst}: {errors[worst]:.2e}"


@pytest.mark.parametrize("algo", ["direct", "auto"])
@pytest.mark.parametrize("name", list(SEED_NETS))
def test_float32_trajectories_stay_within_torchs_own_float32_spread(name, algo, runs):
    r = runs(name)
    exact, fast = r["torch64"], r["fast32" if algo == "auto" else "fast32_direct"]
    factor = WINOGRAD_SPREAD_FACTOR if algo == "auto" else SPREAD_FACTOR
    scale = abs(exact[0][0])
    envelope = [k for k in r if k.startswith("torch32")]

    def loss_err(run):
        return float(np.max(np.abs(run[0] - exact[0]))) / scale

    def param_err(run):
        errors = param_errors(run[1], exact[1])
        worst = max(errors, key=errors.get)
        return errors[worst], worst

    e_torch, e_fast = max(loss_err(r[k]) for k in envelope), loss_err(fast)
    assert e_fast <= factor * e_torch + LOSS_FLOOR, (
        f"losses: fastconv float32 {e_fast:.2e} from the float64 trajectory, torch float32 up to {e_torch:.2e}\n"
        f"float64 {exact[0]}\nfastconv {fast[0]}\ntorch {r['torch32'][0]}"
    )
    (p_fast, where), p_torch = param_err(fast), max(param_err(r[k])[0] for k in envelope)
    assert p_fast <= factor * p_torch + PARAM_FLOOR, (
        f"parameters: fastconv float32 {p_fast:.2e} ({where}) from the float64 run's, torch float32 up to {p_torch:.2e}"
    )
