"""Training converted torch models: parameters, gradients, optimizer steps, in-place edits, and the
torch tools that must see fastconv's ops (torch.compile, torch.jit.trace, ONNX export, DDP).

Trajectory tolerance: 20 SGD steps from the same initialisation give losses equal to torch's
within 1e-4 relative (measured 1e-7..1e-6: float32 rounding of differently ordered sums, grown
over the steps) and weights within 1e-4 of their scale.
"""

from __future__ import annotations

import copy
import io
import os
import socket
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.autograd import gradcheck  # noqa: E402

import fastconv  # noqa: E402
import fastconv.torch as fct  # noqa: E402

TRAJECTORY_RTOL = 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread each for fastconv and torch keeps the tests fast and steady
    on a loaded machine (spinning thread pools are what costs there, not the arithmetic)."""
    old = fastconv.get_num_threads(), torch.get_num_threads()
    fastconv.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    fastconv.set_num_threads(old[0])
    torch.set_num_threads(old[1])


# --- models ---------------------------------------------------------------------------------------
class LeNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 12, 3, padding=1)
        self.pool2 = nn.AvgPool2d(2)
        self.drop = nn.Dropout2d(0.2)
        self.fc = nn.Linear(12 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.pool1(self.conv1(x)))  # N x 6 x 10 x 10 (input 24 x 24)
        x = F.relu(self.pool2(self.drop(self.conv2(x))))  # N x 12 x 5 x 5 → 4 x 4 below
        return self.fc(x[:, :, :4, :4].flatten(1))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.short(x))


def resnet_like():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        Block(8, 8, 1),
        Block(8, 16, 2),
        nn.Conv2d(16, 16, 3, groups=4, padding=1, dilation=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


def tiny():
    """One of each converted module, every op on the way (compile and trace tests)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding="valid"),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d((2, 1)),
        nn.Flatten(),
        nn.Linear(12, 3),
    )


MODELS = {"lenet": (LeNetLike, (8, 1, 24, 24), 10), "resnet": (resnet_like, (6, 3, 16, 16), 5)}


def make(name, seed=0):
    build, shape, classes = MODELS[name]
    torch.manual_seed(seed)
    return build(), shape, classes


def batches(shape, classes, steps, seed=1, distinct=2):
    """``steps`` batches cycling over ``distinct`` random ones: a task the model can learn (memorise)."""
    g = torch.Generator().manual_seed(seed)
    few = [
        (torch.randn(*shape, generator=g), torch.randint(0, classes, (shape[0],), generator=g)) for _ in range(distinct)
    ]
    return [few[i % distinct] for i in range(steps)]


def rel(a, b):
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def train(model, data, lr=0.05, momentum=0.9, seed=3):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses = []
    model.train()
    for step, (x, t) in enumerate(data):
        torch.manual_seed(seed + step)  # the same dropout masks in both models
        loss = F.cross_entropy(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


# --- parameters -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_parameters_are_the_originals(name):
    model, _, _ = make(name)
    fast = fct.convert(model)
    assert [(n, p.shape) for n, p in fast.named_parameters()] == [(n, p.shape) for n, p in model.named_parameters()]
    assert list(fast.state_dict()) == list(model.state_dict())
    assert not any(isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)) for m in fast.modules())
    before = {id(p) for p in model.parameters()}
    # in place: the very parameter objects (an optimizer made before conversion still works)
    same = fct.convert(model, inplace=True)
    assert {id(p) for p in same.parameters()} == before
    conv = fast[0] if name == "resnet" else fast.conv1
    assert isinstance(conv.weight, nn.Parameter) and conv.weight.requires_grad


@pytest.mark.parametrize("name", list(MODELS))
def test_sgd_steps_follow_torch(name):
    model, shape, classes = make(name)
    fast = fct.convert(model)
    data = batches(shape, classes, 20)
    ref_losses = train(model, data)
    got_losses = train(fast, data)
    assert ref_losses[-1] < ref_losses[0]  # it learns: the comparison is not of a flat line
    np.testing.assert_allclose(got_losses, ref_losses, rtol=TRAJECTORY_RTOL)
    for (n, p), q in zip(fast.named_parameters(), model.parameters()):
        assert rel(p.detach(), q.detach()) < TRAJECTORY_RTOL, n
    for (n, b), c in zip(fast.named_buffers(), model.buffers()):  # BatchNorm statistics saw the same activations
        if b.dtype.is_floating_point:
            assert rel(b, c) < TRAJECTORY_RTOL, n


def test_train_and_eval_modes_and_input_gradients():
    model, shape, _ = make("resnet")
    fast = fct.convert(model)
    x = torch.randn(*shape)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        getattr(fast, mode)()
        assert all(a.training == b.training for a, b in zip(model.modules(), fast.modules()))
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        model(xa).square().sum().backward()
        fast(xb).square().sum().backward()
        assert rel(xb.grad, xa.grad) < 1e-4
    unbatched = fct.convert(nn.Sequential(nn.Conv2d(2, 3, 3), nn.MaxPool2d(2)))
    x3 = torch.randn(2, 6, 6, requires_grad=True)
    y = unbatched(x3)
    assert y.shape == (3, 2, 2)
    y.sum().backward()
    assert x3.grad.shape == x3.shape and unbatched[0].weight.grad is not None


def test_requires_grad_false_freezes_weights():
    model, shape, _ = make("lenet")
    fast = fct.convert(model).eval()
    fast.conv1.requires_grad_(False)
    x = torch.randn(*shape, requires_grad=True)
    fast(x).sum().backward()
    assert fast.conv1.weight.grad is None and fast.conv1.bias.grad is None
    assert fast.conv2.weight.grad is not None and x.grad is not None
    fast.requires_grad_(False)
    with torch.enable_grad():
        assert fast(x.detach()).grad_fn is None  # nothing asks for a gradient: fastconv directly


# --- prepared weights follow the parameters -------------------------------------------------------
def test_in_place_edits_are_seen_and_weights_prepared_only_then():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    fast = fct.convert(model)
    conv, ref = fast[0], copy.deepcopy(model[0])
    x = torch.randn(2, 3, 8, 8)

    def check():
        with torch.no_grad():
            torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-5)  # a second call: no new prepare

    check()
    assert conv.prepares == 0
    plans = conv.layer._plans
    check()
    assert conv.layer._plans is plans  # nothing changed: the plans are kept
    edits = [
        lambda m: m.weight.mul_(0.5),
        lambda m: m.bias.add_(1.0),
        lambda m: m.weight.copy_(torch.ones_like(m.weight)),
        lambda m: m.weight[0, 0].zero_(),
    ]
    for n, edit in enumerate(edits, 1):
        with torch.no_grad():
            edit(conv)
            edit(ref)
        check()
        assert conv.prepares == n
    fast.load_state_dict(model.state_dict())  # copy_ into the parameters
    ref.load_state_dict(model[0].state_dict())
    check()
    assert conv.prepares == len(edits) + 1
    opt = torch.optim.SGD(fast.parameters(), lr=0.1)
    fast(x).sum().backward()
    opt.step()
    with torch.no_grad():
        ref.weight.copy_(conv.weight)
        ref.bias.copy_(conv.bias)
    check()
    assert conv.prepares == len(edits) + 2  # the step changed weight and bias: one prepare


def test_dtype_and_device_moves_after_conversion():
    model, shape, _ = make("lenet")
    fast = fct.convert(model).eval()
    model.eval()
    x = torch.randn(*shape)
    fast.double()
    model.double()
    with torch.no_grad():
        assert fast.conv1.weight.dtype == torch.float64
        torch.testing.assert_close(fast(x.double()), model(x.double()), rtol=1e-10, atol=1e-10)
    meta = copy.deepcopy(fast).to("meta")  # another device (no GPU here): the modules call torch there
    assert meta(torch.empty(*shape, device="meta", dtype=torch.float64)).shape == (shape[0], 10)
    fast.to(torch.bfloat16)  # fastconv does not run bfloat16: the module calls torch
    model.to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x.bfloat16()), model(x.bfloat16()))


def test_modules_left_on_torch_keep_training():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.Conv2d(3, 3, 1))
    with pytest.warns(UserWarning, match=r"1 module\(s\) on torch: 0 \(Conv2d\): padding_mode"):
        fast = fct.convert(model)
    assert type(fast[0]) is nn.Conv2d and isinstance(fast[1], fct.FastConv2d)
    x = torch.randn(1, 2, 5, 5)
    fast(x).sum().backward()
    model(x).sum().backward()
    for p, q in zip(fast.parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)
    hooked = nn.Sequential(nn.Conv2d(2, 3, 3))
    hooked[0].register_forward_hook(lambda m, i, o: None)
    with pytest.warns(UserWarning, match="hooks"):
        assert type(fct.convert(hooked)[0]) is nn.Conv2d


def test_deepcopy_has_its_own_prepared_weights():
    fast = fct.convert(nn.Sequential(nn.Conv2d(2, 3, 3)))
    twin = copy.deepcopy(fast)
    assert twin[0]._prepared.handle != fast[0]._prepared.handle
    with torch.no_grad():
        twin[0].weight.zero_()
        twin[0].bias.zero_()
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        assert float(twin(x).abs().max()) == 0 and float(fast(x).abs().max()) > 0


def test_routes_inference_autograd_and_tracing(monkeypatch):
    calls = []
    real_op, real_fn = fct._conv2d_op, fct._Conv2dFunction.apply
    monkeypatch.setattr(fct, "_conv2d_op", lambda *a: calls.append("op") or real_op(*a))
    monkeypatch.setattr(fct._Conv2dFunction, "apply", lambda *a: calls.append("autograd") or real_fn(*a))
    fast = fct.convert(nn.Sequential(nn.Conv2d(2, 3, 3)))
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        fast(x)
    with torch.inference_mode():
        fast(x)
    assert calls == []  # inference: fastconv directly, no dispatcher, no autograd node
    y = fast(x)  # the weight requires grad: eager autograd
    assert calls == ["autograd"] and y.grad_fn is not None
    with torch.no_grad():
        torch.jit.trace(fast, (x,))  # a tracer must record the op
    assert calls[-1] == "op"


# --- gradcheck per op (float64) -------------------------------------------------------------------
def _r(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)


CONV_CASES = {
    "plain": ((2, 3, 6, 5), (4, 3, 3, 3), dict(padding=1)),
    "stride_dilation_groups": (
        (2, 4, 7, 6),
        (6, 2, 3, 2),
        dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
    ),
    "same_even_kernel": ((1, 2, 6, 7), (3, 2, 4, 2), dict(padding="same", dilation=(1, 2))),
    "depthwise_no_bias": ((2, 3, 5, 5), (3, 1, 3, 3), dict(groups=3, stride=2)),
    "unbatched": ((3, 5, 5), (2, 3, 2, 2), dict()),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_gradcheck_conv2d(case):
    xs, ws, kw = CONV_CASES[case]
    x, w = _r(*xs, seed=1), _r(*ws, seed=2)
    b = None if case == "depthwise_no_bias" else _r(ws[0], seed=3)
    assert gradcheck(lambda x, w, b: fct.conv2d(x, w, b, **kw), (x, w, b))
    torch.testing.assert_close(fct.conv2d(x, w, b, **kw), F.conv2d(x, w, b, **kw))


POOL_CASES = {
    "max": (lambda x: fct.max_pool2d(x, 3, 2, 1, ceil_mode=True), lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True)),
    "max_dilated": (lambda x: fct.max_pool2d(x, 2, 1, dilation=2), lambda x: F.max_pool2d(x, 2, 1, dilation=2)),
    "avg": (
        lambda x: fct.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
        lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    ),
    "avg_divisor": (
        lambda x: fct.avg_pool2d(x, 2, divisor_override=3),
        lambda x: F.avg_pool2d(x, 2, divisor_override=3),
    ),
    "adaptive": (lambda x: fct.adaptive_avg_pool2d(x, (4, 3)), lambda x: F.adaptive_avg_pool2d(x, (4, 3))),
    "adaptive_none": (lambda x: fct.adaptive_avg_pool2d(x, (None, 2)), lambda x: F.adaptive_avg_pool2d(x, (None, 2))),
}


@pytest.mark.parametrize("case", list(POOL_CASES))
def test_gradcheck_pools(case):
    ours, theirs = POOL_CASES[case]
    x = _r(2, 3, 9, 8, seed=4)
    assert gradcheck(ours, (x,))
    torch.testing.assert_close(ours(x), theirs(x))


OP_CASES = {
    "conv2d": lambda x, w, b: torch.ops.fastconv.conv2d(x, w, b, [2, 1], [1, 1, 0, 0], [1, 2], 1, -1),
    "conv2d_same": lambda x, w, b: torch.ops.fastconv.conv2d(x, w, None, [1, 1], [1, 1, 0, 1], [1, 1], 1, -1),
    "max_pool2d": lambda x, w, b: torch.ops.fastconv.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], True)[0],
    "avg_pool2d": lambda x, w, b: torch.ops.fastconv.avg_pool2d(x, [3, 2], [2, 2], [1, 1], True, False, None),
    "adaptive_avg_pool2d": lambda x, w, b: torch.ops.fastconv.adaptive_avg_pool2d(x, [4, 3]),
}


@pytest.mark.parametrize("case", list(OP_CASES))
def test_gradcheck_custom_ops(case):
    # the formulas registered on the ops (torch.compile and torch.export differentiate these)
    x, w, b = _r(2, 3, 7, 6, seed=8), _r(4, 3, 3, 2, seed=9), _r(4, seed=10)
    if case == "conv2d_same":
        w = _r(4, 3, 3, 2, seed=9)  # kernel width 2: "same" pads the odd column after
    assert gradcheck(OP_CASES[case], (x, w, b))


def test_max_pool_indices_and_opcheck():
    x = _r(2, 3, 7, 7, seed=5)
    y, i = fct.max_pool2d(x, 3, 2, 1, return_indices=True)
    ty, ti = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert torch.equal(i, ti) and not i.requires_grad
    w, b = _r(4, 3, 3, 3, seed=6), _r(4, seed=7)
    ops = [
        (torch.ops.fastconv.conv2d.default, (x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 1, -1)),
        (torch.ops.fastconv.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], True)),
        (torch.ops.fastconv.avg_pool2d.default, (x, [3, 3], [2, 2], [1, 1], True, False, None)),
        (torch.ops.fastconv.adaptive_avg_pool2d.default, (x, [4, 3])),
    ]
    for op, args in ops:  # schema, fake (meta) implementation, autograd registration, AOT dispatch
        torch.library.opcheck(op, args)


# --- torch tools ----------------------------------------------------------------------------------
def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    fast = fct.convert(tiny())
    x = torch.randn(3, 3, 12, 12)
    compiled = torch.compile(fast, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fast(x), rtol=1e-5, atol=1e-6)
    compiled(x).square().sum().backward()
    grads = [p.grad.clone() for p in fast.parameters()]
    fast.zero_grad()
    fast(x).square().sum().backward()
    for g, p in zip(grads, fast.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6)
    prepares = fast[0].prepares
    with torch.no_grad():
        fast[0].weight.mul_(-1)  # the compiled graph sees the edit too (the op re-prepares)
        torch.testing.assert_close(compiled(x), fast(x), rtol=1e-5, atol=1e-6)
    assert fast[0].prepares == prepares + 1


def test_jit_trace_records_fastconv_ops():
    torch.manual_seed(0)
    fast = fct.convert(tiny()).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        traced = torch.jit.trace(fast, (x,))
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert {
        "fastconv::conv2d",
        "fastconv::max_pool2d",
        "fastconv::avg_pool2d",
        "fastconv::adaptive_avg_pool2d",
    } <= kinds
    x2 = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        a, b = traced(x), traced(x2)
        assert not torch.allclose(a, b)  # not a constant
        torch.testing.assert_close(b, fast(x2))


def test_onnx_export_writes_standard_nodes():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = tiny().eval()
    fast = fct.convert(model)
    x, x2 = torch.randn(2, 3, 12, 12), torch.randn(2, 3, 12, 12)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch's note on the TorchScript exporter
        torch.onnx.export(fast, (x,), f, dynamo=False)
    ops = {n.op_type for n in onnx.load_from_string(f.getvalue()).graph.node}
    assert {"Conv", "MaxPool", "AveragePool"} <= ops
    sess = ort.InferenceSession(f.getvalue())
    name = sess.get_inputs()[0].name
    with torch.no_grad():
        for inp in (x, x2):
            np.testing.assert_allclose(sess.run(None, {name: inp.numpy()})[0], model(inp).numpy(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        traced = torch.jit.trace(fast, (x,))
    with pytest.raises(Exception, match="fastconv::conv2d"):  # a traced graph holds fastconv's ops: a clear refusal
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(traced, (x,), io.BytesIO(), dynamo=False)


def test_onnx_dynamo_export_writes_standard_nodes():
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    fast = fct.convert(tiny()).eval()
    prog = torch.onnx.export(fast, (torch.randn(2, 3, 12, 12),), dynamo=True)
    ops = {n.op_type for n in onnx.load_from_string(prog.model_proto.SerializeToString()).graph.node}
    assert "Conv" in ops and not any("fastconv" in o for o in ops)


def test_export_for_onnx_holds_torch_ops():
    # what torch.onnx.export(dynamo=True) converts: a torch.export program taken under its flag
    # (strict and non-strict); without onnxscript installed the export itself cannot run here
    flags = getattr(fct, "_onnx_flags", None)
    if flags is None:
        pytest.skip("this torch keeps its ONNX export flag elsewhere")
    fast = fct.convert(tiny()).eval()
    x = torch.randn(2, 3, 12, 12)
    plain = torch.export.export(fast, (x,))
    assert any("fastconv" in str(n.target) for n in plain.graph.nodes)  # torch.export sees fastconv's ops
    for strict in (False, True):
        prog = flags.set_onnx_exporting_flag(lambda: torch.export.export(fast, (x,), strict=strict))()
        targets = {str(n.target) for n in prog.graph.nodes if n.op == "call_function"}
        assert "aten.conv2d.default" in targets and not any("fastconv" in t for t in targets)


def test_state_dict_round_trip_after_training():
    model, shape, classes = make("lenet")
    fast = fct.convert(model)
    train(fast, batches(shape, classes, 3))
    saved = io.BytesIO()
    torch.save(fast.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved)
    fresh, _, _ = make("lenet", seed=5)
    fresh_fast = fct.convert(fresh)
    fresh_fast.load_state_dict(state)
    fresh.load_state_dict(state)  # the converted model's state_dict is a plain torch model's
    x = torch.randn(*shape)
    for m in (fast, fresh_fast, fresh):
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh_fast(x), fast(x))
        torch.testing.assert_close(fresh(x), fast(x), rtol=1e-4, atol=1e-5)


# --- DistributedDataParallel ----------------------------------------------------------------------
_DDP_WORKER = textwrap.dedent("""
    import os, sys
    import torch, torch.distributed as dist
    import torch.multiprocessing as mp
    import torch.nn.functional as F
    import fastconv, fastconv.torch as fct
    from torch.nn.parallel import DistributedDataParallel as DDP

    def worker(rank, port, out):
        torch.set_num_threads(1)
        fastconv.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        state, data = torch.load(out + ".in")
        model = fct.convert(build())
        model.load_state_dict(state)
        ddp = DDP(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        for x, t in data:
            half = x.shape[0] // 2
            loss = F.cross_entropy(ddp(x[rank * half:(rank + 1) * half]), t[rank * half:(rank + 1) * half])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if rank == 0:
            torch.save(model.state_dict(), out)
        # both ranks leave together: a rank tearing gloo down while the other's last allreduce
        # threads still run aborts the process ("terminate called without an active exception",
        # seen once in ~10 CI runs)
        dist.barrier()
        dist.destroy_process_group()

    def build():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                   torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.AvgPool2d(2),
                                   torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(24, 3))

    if __name__ == "__main__":
        mp.spawn(worker, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2, join=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_on_the_combined_batch(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(_DDP_WORKER)
    ns: dict = {}
    exec(compile(_DDP_WORKER.split("if __name__")[0], "ddp_worker", "exec"), ns)
    torch.manual_seed(0)
    ref = ns["build"]()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 1, 10, 10, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(5)]
    out = str(tmp_path / "ddp_state.pt")
    torch.save((ref.state_dict(), data), out + ".in")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(_free_port()), out],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_state = torch.load(out)
    single = fct.convert(ref)  # one process, the combined batch of 8 (DDP averages the two halves' gradients)
    opt = torch.optim.SGD(single.parameters(), lr=0.05)
    for x, t in data:
        loss = F.cross_entropy(single(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in single.state_dict().items():
        assert rel(ddp_state[k], v) < 1e-5, k
        assert not torch.equal(v, ref.state_dict()[k]) or k.endswith("num_batches_tracked")
