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
SPREAD_FACTOR = 2.0
# learning rates at which each net's loss falls over the 20 steps without blowing up (the zoo's
# He-initialised nets start with large logits; VGG-11 at 0.01 diverges to NaN within 7 steps)
SEED_NETS = {"lenet": 0.01, "alexnet": 0.002, "vgg11": 0.001, "nin": 0.01, "resnet18": 0.01, "densenet": 0.01}


@pytest.fixture(autouse=True)
def one_thread():
    """Small nets and batches: one thread each for fastconv and torch keeps the runs steady on a
    loaded machine (idle pools spinning against each other cost more than the arithmetic)."""
    old = fastconv.get_num_threads(), torch.get_num_threads()
    fastconv.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    fastconv.set_num_threads(old[0])
    torch.set_num_threads(old[1])


def batches(name: str, steps: int = STEPS, distinct: int = 2, seed: int = 1) -> list:
    """``steps`` batches cycling over ``distinct`` random ones (a task the net can memorise)."""
    g = torch.Generator().manual_seed(seed)
    shape = zoo.input_shape(name, BATCH, small=True)
    few = [(torch.randn(*shape, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)) for _ in range(distinct)]
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


@pytest.fixture(scope="module")
def runs():
    """Each net's four runs (torch and fastconv, float64 and float32), made once per module."""
    cache: dict = {}

    def get(name):
        if name not in cache:
            base = zoo.build(name, small=True)
            data = batches(name)
            lr = SEED_NETS[name]
            out = {}
            for tag, dtype, convert, ulps in (
                ("torch64", torch.float64, False, None),
                ("fast64", torch.float64, True, None),
                ("torch32", torch.float32, False, None),
                ("torch32_ulp1", torch.float32, False, 1),
                ("torch32_ulp2", torch.float32, False, 2),
                ("fast32", torch.float32, True, None),
            ):
                model = copy.deepcopy(base)
                if ulps is not None:
                    nudge(model, ulps)
                if convert:
                    model = fct.convert(model)
                losses = train(model, data, lr, dtype)
                out[tag] = (losses, state(model))
            cache[name] = out
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


@pytest.mark.parametrize("name", list(SEED_NETS))
def test_float32_trajectories_stay_within_torchs_own_float32_spread(name, runs):
    r = runs(name)
    exact = r["torch64"]
    scale = abs(exact[0][0])
    envelope = [k for k in r if k.startswith("torch32")]

    def loss_err(run):
        return float(np.max(np.abs(run[0] - exact[0]))) / scale

    def param_err(run):
        errors = param_errors(run[1], exact[1])
        worst = max(errors, key=errors.get)
        return errors[worst], worst

    e_torch, e_fast = max(loss_err(r[k]) for k in envelope), loss_err(r["fast32"])
    assert e_fast <= SPREAD_FACTOR * e_torch + LOSS_FLOOR, (
        f"losses: fastconv float32 {e_fast:.2e} from the float64 trajectory, torch float32 up to {e_torch:.2e}\n"
        f"float64 {exact[0]}\nfastconv {r['fast32'][0]}\ntorch {r['torch32'][0]}"
    )
    (p_fast, where), p_torch = param_err(r["fast32"]), max(param_err(r[k])[0] for k in envelope)
    assert p_fast <= SPREAD_FACTOR * p_torch + PARAM_FLOOR, (
        f"parameters: fastconv float32 {p_fast:.2e} ({where}) from the float64 run's, torch float32 up to {p_torch:.2e}"
    )
