"""The server-overhead bench: every streamed token reaches its client through the app over the stand-in engine."""
import sys

from benchmarks import serve_overhead


def test_every_token_is_streamed(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["serve_overhead", "--requests", "6", "--tokens", "5", "--step-ms", "2",
                                      "--client-processes", "2"])
    serve_overhead.main()  # asserts that the clients received requests x tokens
    assert "30 tokens over 6 streams" in capsys.readouterr().out
