from tritium.__main__ import main


def test_generate_prints_each_prompt(tiny_checkpoint, capsys):
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt", "The fox", "--prompt", "Hi",
                 "--max-tokens", "3", "--chat"]) == 0
    out = capsys.readouterr().out
    assert "--- 'The fox'" in out and "--- 'Hi'" in out


def test_bad_model_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_serve_rejects_a_bad_model_directory_and_engine_flags_reach_the_engine(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing"), "--port", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x", "--kvcache-block-size", "3"]) == 2
    assert "kvcache_block_size" in capsys.readouterr().err  # the option was checked before the model was opened
