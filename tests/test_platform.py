import os
import re
import subprocess
import sys

import torch

import tritium


def _run(code, env_extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)


def test_cpu_mode_matches_the_machine():
    # without CUDA tritium chooses the interpreter itself; with CUDA it runs kernels there unless the user set it
    if not torch.cuda.is_available():
        assert os.environ["TRITON_INTERPRET"] == "1"
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    assert tritium.platform.INTERPRET == interpret
    assert tritium.platform.DEVICE.type == ("cpu" if interpret else "cuda")
    assert tritium.platform.HAS_CUDA == torch.cuda.is_available()
    name = tritium.platform.gpu_name()
    assert re.fullmatch(r"[a-z0-9-]+", name)  # used in file names (autotune tables, results)
    assert (name == "cpu") == (not torch.cuda.is_available())


def test_import_sets_interpreter_before_triton():
    code = "import tritium, os, triton.knobs as k; print(os.environ.get('TRITON_INTERPRET'), k.runtime.interpret)"
    out = _run(code, {}).stdout.split()
    if torch.cuda.is_available():
        assert out == ["None", "False"]
    else:
        assert out == ["1", "True"]


def test_user_setting_is_respected():
    out = _run("import tritium; print(tritium.platform.INTERPRET)", {"TRITON_INTERPRET": "0"}).stdout.strip()
    assert out == "False"


def test_cpu_mode_message_is_shown_once():
    code = "import tritium.platform as p; p.announce_cpu_mode(); p.announce_cpu_mode()"
    err = _run(code, {}).stderr
    expected = 0 if torch.cuda.is_available() else 1
    assert err.count("Triton's interpreter") == expected


def test_public_names_are_reserved():
    assert set(tritium.__all__) == {"LLM", "SamplingParams"}
