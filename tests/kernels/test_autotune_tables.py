"""Per-GPU tables of tuned choices (tritium/autotune/tables.py), on the CPU: a real multi-config triton
Autotuner with a stand-in timer (BLOCK=8 wins every tuning), tables written to a temporary directory."""
import importlib
import json

import pytest
import torch
import triton
import triton.language as tl

import tritium.autotune as at
from tritium.autotune import next_pow2, tables, tuning_key
from tritium.engine.warmup import bucket_sizes, prefill_steps


@triton.jit
def _block_kernel(
    out_ptr,  # [1] written: the BLOCK the launch ran with
    n,  # N
    n_bucket,  # next_pow2(N) (autotune key)
    BLOCK: tl.constexpr,
):
    if tl.program_id(0) == 0:
        tl.store(out_ptr, BLOCK)


CONFIGS = [triton.Config({"BLOCK": 4}, num_warps=1), triton.Config({"BLOCK": 8}, num_warps=1)]


class _Timer:
    """Stand-in for the graph timer: configs are timed in CONFIGS order and the second (BLOCK=8) wins."""

    def __init__(self):
        self.trials = 0

    def __call__(self, kernel_call, quantiles):
        self.trials += 1
        kernel_call()
        t = 1.0 if self.trials % 2 == 0 else 2.0
        return [t, t, t]


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A full tuner (not the interpreter's single config), an empty registry and table directory, 'testgpu'."""
    timer = _Timer()
    monkeypatch.setattr(at, "INTERPRET", False)
    monkeypatch.setattr(at, "graph_bench", timer)
    monkeypatch.setattr(at, "gpu_name", lambda: "testgpu")
    monkeypatch.setattr(tables, "TABLES", tmp_path)
    monkeypatch.setattr(tables, "KERNELS", {})
    monkeypatch.setattr(tables, "_loaded", {})
    monkeypatch.delenv("TRITIUM_TUNE_TABLES", raising=False)
    monkeypatch.setenv("TRITIUM_CACHE", str(tmp_path / "cache"))
    return timer


def _run(tk, n) -> int:
    """Launch at size n (tuned config); returns the BLOCK the kernel ran with."""
    out = torch.zeros(1, dtype=torch.int32)
    tk(lambda meta: (triton.cdiv(n, meta["BLOCK"]),), out, n, next_pow2(n))
    return int(out[0])


def _key(n):
    return repr(tuning_key(["out_ptr", "n", "n_bucket"], ["n_bucket"], (torch.zeros(1, dtype=torch.int32), n,
                                                                         next_pow2(n)), {}))


def _write(tmp_path, kernels):
    (tmp_path / "testgpu.json").write_text(json.dumps({"gpu": "testgpu", "triton": "x", "kernels": kernels}))


def test_tabled_key_runs_the_tables_config_without_tuning(env, tmp_path):
    """The table names BLOCK=4 (which the timer would lose): it runs, with no trial; other keys still tune."""
    _write(tmp_path, {"k": {_key(12): tables.config_entry(CONFIGS[0])}})
    tk = at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="k")
    assert _run(tk, 12) == 4 and env.trials == 0
    assert _run(tk, 40) == 8 and env.trials == 2, "a key the table lacks is tuned at run time"


def test_unnamed_kernels_and_tables_off_ignore_the_table(env, tmp_path, monkeypatch):
    _write(tmp_path, {"k": {_key(12): tables.config_entry(CONFIGS[0])}})
    assert _run(at.tuned(_block_kernel, CONFIGS, key=["n_bucket"]), 12) == 8 and env.trials == 2
    assert tables.active_tables("testgpu") == [tmp_path / "testgpu.json"]
    monkeypatch.setenv("TRITIUM_TUNE_TABLES", "0")
    assert tables.active_tables("testgpu") == []
    assert _run(at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="k"), 12) == 8 and env.trials == 4


def test_entry_outside_configs_is_ignored(env, tmp_path):
    """A config the kernel no longer has (CONFIGS changed since the table was written) is tuned again."""
    _write(tmp_path, {"k": {_key(12): {"kwargs": {"BLOCK": 16}, "num_warps": 1, "num_stages": 3}}})
    tk = at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="k")
    assert _run(tk, 12) == 8 and env.trials == 2


def test_save_then_load_round_trip_and_merge(env, tmp_path):
    """save() writes every named kernel's choices, keeps other kernels' and keys' entries, and this run's
    choice wins a shared key; a fresh kernel of the same name then starts with them."""
    old = tables.config_entry(CONFIGS[0])
    _write(tmp_path, {"other": {"(1,)": old}, "k": {_key(12): old, _key(3): old}})
    tk = at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="k")
    tk.seeded = True  # skip the table: tune afresh, as the tuning command does
    assert _run(tk, 12) == 8 and _run(tk, 100) == 8 and env.trials == 4
    assert tables.held_keys() == 2
    tables.save("testgpu")
    doc = json.loads((tmp_path / "testgpu.json").read_text())
    new = tables.config_entry(CONFIGS[1])
    assert doc["kernels"] == {"other": {"(1,)": old}, "k": {_key(12): new, _key(3): old, _key(100): new}}
    tables.KERNELS.clear()
    fresh = at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="k")
    assert [_run(fresh, n) for n in (12, 3, 100)] == [8, 4, 8] and env.trials == 4
    assert tables.held_keys() == 3, "seeded keys count as held"


def test_user_table_overrides_the_package_and_gets_only_what_was_tuned(env, tmp_path):
    """An engine saves to the user's cache only the choices the tables lacked; a key in both tables runs the
    user's entry."""
    old, new = tables.config_entry(CONFIGS[0]), tables.config_entry(CONFIGS[1])
    _write(tmp_path, {"k": {_key(12): old, _key(3): old}})
    user = tables.user_dir()
    user.mkdir(parents=True)
    _write(user, {"k": {_key(3): new}})
    tk = at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="k")
    assert tables.active_tables("testgpu") == [tmp_path / "testgpu.json", user / "testgpu.json"]
    assert [_run(tk, n) for n in (12, 3)] == [4, 8] and env.trials == 0
    assert _run(tk, 100) == 8 and env.trials == 2
    tables.save("testgpu", user, only_new=True)
    assert json.loads((user / "testgpu.json").read_text())["kernels"] == {"k": {_key(3): new, _key(100): new}}
    assert json.loads((tmp_path / "testgpu.json").read_text())["kernels"] == {"k": {_key(12): old, _key(3): old}}


def test_names_are_unique(env):
    at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="k")
    with pytest.raises(ValueError, match="named 'k'"):
        at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="k")


def test_the_engines_kernels_are_named():
    for module in ("kv_store", "rmsnorm"):  # the modules register their kernels at import
        importlib.import_module(f"tritium.kernels.{module}")
    assert {"store_kv", "rms_norm_rows", "rms_norm_heads"} <= set(tables.KERNELS)


@pytest.mark.parametrize("limit", [1, 2, 5, 12000, 16384])
def test_bucket_sizes_meet_every_bucket_up_to_the_limit(limit):
    sizes = bucket_sizes(limit)
    assert sorted({next_pow2(n) for n in sizes}) == [1 << i for i in range(next_pow2(limit).bit_length())]
    assert max(sizes) == limit


@pytest.mark.parametrize("max_tokens,max_len", [(16384, 4096), (1000, 4096), (64, 16), (5, 2)])
def test_prefill_steps_cover_every_token_bucket_at_both_parities(max_tokens, max_len):
    steps = prefill_steps(max_tokens, max_len)
    totals = [sum(s) for s in steps]
    assert sorted({next_pow2(n) for n in totals}) == sorted({next_pow2(n) for n in bucket_sizes(max_tokens)})
    for bucket in {next_pow2(n) for n in totals}:  # an odd and an even count wherever the bucket holds both
        parities = {n % 2 for n in range(bucket // 2 + 1, min(bucket, max_tokens) + 1)}
        assert {n % 2 for n in totals if next_pow2(n) == bucket} == parities
    assert all(sum(s) <= max_tokens for s in steps)
    assert all(1 <= n <= max_len - 1 for s in steps for n in s)


def test_first_launch_seeds_every_registered_kernel(env, tmp_path):
    """held_keys() before a timed run counts every table entry, not only those of kernels launched so far."""
    _write(tmp_path, {"a": {_key(12): tables.config_entry(CONFIGS[0])},
                      "b": {_key(12): tables.config_entry(CONFIGS[0]), _key(3): tables.config_entry(CONFIGS[1])}})
    a = at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="a")
    b = at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="b")
    assert _run(a, 12) == 4 and tables.held_keys() == 3 and b.seeded
    assert _run(b, 3) == 8 and env.trials == 0


def test_unreadable_table_or_key_is_skipped_with_kernels_still_tuning(env, tmp_path):
    (tmp_path / "testgpu.json").write_text('{"gpu": "testgpu", "kernels": {"k": ')  # cut short
    tk = at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="k")
    with pytest.warns(RuntimeWarning, match="ignoring the tuning table"):
        assert _run(tk, 12) == 8
    assert env.trials == 2
    with pytest.warns(RuntimeWarning, match="ignoring the tuning table"):
        tables.save("testgpu")  # over the unreadable file: writes a whole one
    assert json.loads((tmp_path / "testgpu.json").read_text())["kernels"] == {
        "k": {_key(12): tables.config_entry(CONFIGS[1])}}

    old = tables.config_entry(CONFIGS[0])
    _write(tmp_path, {"k2": {"(1, nope": old, _key(12): old}})
    k2 = at.tuned(_block_kernel, CONFIGS, key=["n_bucket"], name="k2")
    assert _run(k2, 12) == 4 and env.trials == 2, "the readable key is seeded, the other skipped"


@pytest.mark.parametrize("value,on", [("0", False), ("false", False), ("Off", False), ("1", True), ("yes", True)])
def test_tables_switch(monkeypatch, value, on):
    monkeypatch.setenv("TRITIUM_TUNE_TABLES", value)
    assert tables.enabled() is on


def test_tuning_command_runs_its_sweeps_and_writes_a_table(monkeypatch, tmp_path):
    """`python -m tritium.autotune` end to end on the tiny checkpoint: it refuses the interpreter (one config
    per kernel, nothing to tune); with that check lifted, its sweeps run and it writes an empty table."""
    import tritium.autotune.__main__ as cli

    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        cli.main(["--preset", "tiny"])
    monkeypatch.setattr(cli, "require_gpu", lambda: None)
    monkeypatch.setattr(tables, "TABLES", tmp_path)
    monkeypatch.setattr(tables, "_loaded", {})
    monkeypatch.setenv("TRITIUM_TUNE_TABLES", "1")
    cli.main(["--preset", "tiny", "--max-model-len", "16", "--kvcache-block-size", "16",
          "--max-num-batched-tokens", "24", "--max-num-seqs", "3"])
    doc = json.loads((tmp_path / "cpu.json").read_text())
    assert doc["gpu"] == "cpu" and doc["kernels"] == {} and doc["triton"] == triton.__version__
