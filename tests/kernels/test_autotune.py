"""The autotune layer's mechanisms, on the CPU: in-place kernels tuned on copies (the caller's tensors see
exactly one launch per call, the tuner runs once per key), triton's cache key mirrored, and the graph
timer's fallback. A real triton Autotuner runs in the interpreter with a stand-in timer."""
import pytest
import torch
import triton
import triton.language as tl

import tritium.autotune as at
from tritium.autotune import TunedKernel, next_pow2, tuning_key, with_copies


@triton.jit
def _affine_kernel(
    x_ptr,  # [N] strided, in place: x <- 2 x + 1 (not idempotent, so every extra launch shows)
    n,  # N
    n_bucket,  # next_pow2(N) (autotune key)
    stride,  # x stride
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    p = x_ptr + i * stride
    tl.store(p, tl.load(p, mask=i < n) * 2.0 + 1.0, mask=i < n)


CONFIGS = [triton.Config({"BLOCK": 4}, num_warps=1), triton.Config({"BLOCK": 8}, num_warps=1)]


class _Timer:
    """Stand-in for do_bench: runs each trial `calls` times (as a real timer does) and makes BLOCK=8 win."""

    def __init__(self, calls=3):
        self.trials = 0
        self.calls = calls

    def __call__(self, kernel_call, quantiles):
        self.trials += 1
        for _ in range(self.calls):
            kernel_call()
        t = 1.0 if self.trials % 2 == 0 else 2.0  # configs are timed in CONFIGS order: the second wins
        return [t, t, t]


def _kernel(tune_on_copies=("x_ptr",)):
    timer = _Timer()
    tuner = triton.autotune(configs=CONFIGS, key=["n_bucket"], do_bench=timer)(_affine_kernel)
    return TunedKernel(fn=_affine_kernel, configs=CONFIGS, tuner=tuner, tune_on_copies=tune_on_copies), timer


def _launch(tk, x):
    n = x.shape[0]
    tk(lambda meta: (triton.cdiv(n, meta["BLOCK"]),), x, n, next_pow2(n), x.stride(0))


def test_in_place_kernel_tuned_on_copies_once_per_key():
    tk, timer = _kernel()
    buf = torch.randn(2 * 13)
    x = buf[::2]  # a strided view: a copy must keep stride 2
    before = buf.clone()
    _launch(tk, x)
    assert timer.trials == 2, "each config timed once on the first launch of a key"
    assert torch.equal(x, before[::2] * 2 + 1), "the caller's tensor saw exactly one launch"
    assert torch.equal(buf[1::2], before[1::2]), "nothing outside the view written"
    key = tuning_key(tk.tuner.arg_names, tk.tuner.keys, (x, 13, 16, 2), {})
    assert list(tk.tuner.cache) == [key], "our key is the one triton cached the choice under"
    assert tk.tuner.cache[key].kwargs["BLOCK"] == 8

    _launch(tk, x)  # same key (13 -> bucket 16): no trials
    assert timer.trials == 2
    assert torch.equal(x, (before[::2] * 2 + 1) * 2 + 1)

    y = torch.randn(3)
    y0 = y.clone()
    _launch(tk, y)  # a new key: tuned again, again on copies
    assert timer.trials == 4 and len(tk.tuner.cache) == 2
    assert torch.equal(y, y0 * 2 + 1)


def test_without_copies_the_trials_clobber_the_input():
    """The property above is the mechanism's doing: with nothing named, trials run on the real tensor."""
    tk, timer = _kernel(tune_on_copies=())
    x = torch.randn(5)
    x0 = x.clone()
    _launch(tk, x)
    assert timer.trials == 2
    assert not torch.equal(x, x0 * 2 + 1)


def _twice_plus_one(x, k):
    """x after k launches of _affine_kernel (x <- 2 x + 1)."""
    return x * 2**k + (2**k - 1)


def test_rotated_trials_cycle_over_copies(monkeypatch):
    """rotate=: every config's trial cycles over enough copies of the streamed tensor to pass ROTATE_BYTES
    (here 3 copies), every config is compiled (launched once on the first copy) before any is timed, the
    winner is cached under triton's key, and the caller's tensor sees exactly one launch."""
    made = []

    def recording_copies(*a):
        made.append(with_copies(*a))
        return made[-1]

    monkeypatch.setattr(at, "with_copies", recording_copies)
    monkeypatch.setattr(at, "ROTATE_BYTES", 3 * 13 * 4)  # three sets of 13 fp32
    timer = _Timer(calls=3)
    monkeypatch.setattr(at, "graph_bench", timer)
    tuner = triton.autotune(configs=CONFIGS, key=["n_bucket"], do_bench=lambda *a, **k: pytest.fail("triton timed"))(
        _affine_kernel)
    tk = TunedKernel(fn=_affine_kernel, configs=CONFIGS, tuner=tuner, tune_on_copies=("x_ptr",), rotate=("x_ptr",))
    buf = torch.randn(2 * 13)
    x = buf[::2]
    before = buf.clone()
    _launch(tk, x)
    assert timer.trials == 2 * at.TUNE_ROUNDS and len(made) == 3
    copies = [args[0] for args, _ in made]
    assert len({c.data_ptr() for c in copies} | {x.data_ptr()}) == 4 and all(c.stride() == (2,) for c in copies)
    # set 0: one compile launch per config + one trial call per config and round; sets 1, 2: the trial calls
    trial_calls = 2 * at.TUNE_ROUNDS
    for c, launches in zip(copies, (2 + trial_calls, trial_calls, trial_calls)):
        assert torch.allclose(c, _twice_plus_one(before[::2], launches))
    assert torch.equal(x, _twice_plus_one(before[::2], 1)) and torch.equal(buf[1::2], before[1::2])
    key = tuning_key(tk.tuner.arg_names, tk.tuner.keys, (x, 13, 16, 2), {})
    assert list(tk.tuner.cache) == [key] and tk.tuner.cache[key].kwargs["BLOCK"] == 8
    _launch(tk, x)  # tuned key: no more trials
    assert timer.trials == 2 * at.TUNE_ROUNDS and torch.equal(x, _twice_plus_one(before[::2], 2))


def test_tuning_key_includes_dtypes_and_kwargs():
    names = ["a_ptr", "n", "b_ptr", "FLAG"]
    a, b = torch.zeros(2, dtype=torch.float16), torch.zeros(2)
    assert tuning_key(names, ["n", "FLAG"], (a, 7), {"b_ptr": b, "FLAG": True, "grid": 1}) == (
        7, True, "torch.float16", "torch.float32")


def test_with_copies_keeps_strides_values_and_aliasing():
    base = torch.randn(6, 10)
    v = base[:, 2:8].view(6, 2, 3)  # a strided slice, like q out of a packed qkv row
    other = torch.randn(4)
    args, kwargs = with_copies(["q_ptr", "k_ptr", "n", "w_ptr"], ("q_ptr", "k_ptr"), (v, v, 5), {"w_ptr": other})
    q, k, n = args
    assert q is k, "one tensor passed twice gets one copy"
    assert q.data_ptr() != v.data_ptr() and q.stride() == v.stride() and torch.equal(q, v)
    assert n == 5 and kwargs["w_ptr"] is other, "unnamed arguments pass through"


def test_graph_bench_falls_back_to_do_bench(monkeypatch):
    from triton import testing

    def no_graph(fn, rep, quantiles):
        raise RuntimeError("capture failed")

    seen = {}

    def plain(fn, quantiles):
        seen["q"] = quantiles
        return [1.0, 0.5, 2.0]

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(testing, "do_bench_cudagraph", no_graph)
    monkeypatch.setattr(testing, "do_bench", plain)
    assert at.graph_bench(lambda: None, quantiles=(0.5, 0.2, 0.8)) == [1.0, 0.5, 2.0]
    assert seen["q"] == (0.5, 0.2, 0.8)
    monkeypatch.setattr(testing, "do_bench_cudagraph", lambda fn, rep, quantiles: [3.0, 2.0, 4.0])
    assert at.graph_bench(lambda: None, quantiles=(0.5, 0.2, 0.8)) == [3.0, 2.0, 4.0]


@pytest.mark.gpu
def test_gpu_graph_bench_times_a_kernel():
    x = torch.randn(1 << 12, device="cuda")
    r = at.graph_bench(lambda: x.mul_(1.0), quantiles=(0.5, 0.2, 0.8))
    assert len(r) == 3 and 0 < r[1] <= r[0] <= r[2] < 1.0  # ms


@pytest.mark.gpu
def test_gpu_tuned_in_place_kernel_sees_one_launch():
    """The real tuner (graph-timed trials) on the GPU: the strided in-place tensor is updated exactly once."""
    tk = at.tuned(_affine_kernel, CONFIGS, key=["n_bucket"], tune_on_copies=("x_ptr",))
    buf = torch.randn(2 * 1000, device="cuda")
    x = buf[::2]
    before = buf.clone()
    _launch(tk, x)
    assert len(tk.tuner.cache) == 1
    assert torch.equal(x, before[::2] * 2 + 1)
    assert torch.equal(buf[1::2], before[1::2])


@pytest.mark.gpu
def test_gpu_rotated_tuning_launches_once():
    """Rotated trials on the GPU (graph-timed, copies passing the L2): a config is cached and the caller's
    strided tensor is updated exactly once."""
    tk = at.tuned(_affine_kernel, CONFIGS, key=["n_bucket"], tune_on_copies=("x_ptr",), rotate=("x_ptr",))
    buf = torch.randn(2 * 100_000, device="cuda")
    x = buf[::2]
    before = buf.clone()
    _launch(tk, x)
    assert len(tk.tuner.cache) == 1
    assert torch.equal(x, before[::2] * 2 + 1) and torch.equal(buf[1::2], before[1::2])


@triton.jit
def _flag_kernel(
    out_ptr,  # [2] written: (BLOCK, EVEN) as the kernel saw them
    n,  # N
    n_bucket,  # next_pow2(N) (autotune key)
    BLOCK: tl.constexpr,
    EVEN: tl.constexpr,  # n % BLOCK == 0, derived by a heuristic from the chosen config
):
    if tl.program_id(0) == 0:
        tl.store(out_ptr, BLOCK)
        tl.store(out_ptr + 1, EVEN)


_EVEN = {"EVEN": lambda a: a["n"] % a["BLOCK"] == 0}


@pytest.mark.parametrize("n,expect", [(12, {4: 1, 8: 0}), (16, {4: 1, 8: 1}), (13, {4: 0, 8: 0})])
def test_heuristics_see_the_config_on_every_launch_path(monkeypatch, n, expect):
    """tuned(heuristics=...) derives a constexpr from the chosen config: on tuner trials (a real multi-config
    Autotuner with a stand-in timer), the tuned launch and explicit config= launches alike."""
    timer = _Timer()
    monkeypatch.setattr(at, "INTERPRET", False)  # build the full tuner (all CONFIGS) ...
    monkeypatch.setattr(at, "graph_bench", timer)  # ... timed by the stand-in
    tk = at.tuned(_flag_kernel, CONFIGS, key=["n_bucket"], heuristics=_EVEN)
    out = torch.zeros(2, dtype=torch.int32)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
    tk(grid, out, n, next_pow2(n))
    assert timer.trials == 2 and out.tolist() == [8, expect[8]], "BLOCK = 8 wins; EVEN computed for it"
    for config in CONFIGS:
        out.zero_()
        tk(grid, out, n, next_pow2(n), config=config)
        b = config.kwargs["BLOCK"]
        assert out.tolist() == [b, expect[b]]


def test_needs_int64_bounds():
    assert not at.needs_int64(((16384, 4096), (4096, 1)), ((4096, 32, 128), (6144, 128, 1)))
    assert at.needs_int64(((2**20, 4096), (4096, 1)))  # 2^32 elements
    assert at.needs_int64(((2**19 - 512, 4096), (4096, 1)))  # 2^31 exactly, padded rows included
    assert not at.needs_int64(((2**19 - 1024, 4096), (4096, 1)))
    assert at.needs_int64(((4, 2**20, 64), (0, 2**11, 1)))  # a big middle stride counts too
