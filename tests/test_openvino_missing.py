"""Without the ``openvino`` extra, asking for the runtime is refused in one line naming the
install command. Runs everywhere (CI has no OpenVINO; here its import is blocked), unlike
test_openvino.py, which needs the extra."""

import sys

import pytest

from cli_helpers import assert_one_line_error, run_cli
from model_helpers import digits_model, save_digits_checkpoint
from namprune.core.settings import OPENVINO_INSTALL


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return save_digits_checkpoint(tmp_path_factory.mktemp("no-ov") / "model.pt", digits_model("resnet20", "nam", 16))


@pytest.mark.parametrize("command", [["export", "{run}", "--runtime", "openvino", "--out", "{tmp}/m.xml"],
                                     ["export", "{run}", "--runtime", "openvino", "--int8", "--out", "{tmp}/m.xml"],
                                     ["prune", "{run}", "--target-latency", "0.6", "--latency-runtime", "openvino",
                                      "--out", "{tmp}/m"],
                                     ["prune", "{run}", "--round-to", "auto", "--latency-runtime", "openvino",
                                      "--out", "{tmp}/m"]])
def test_without_openvino_the_runtime_is_refused_with_the_install_command(run, tmp_path, capsys, monkeypatch,
                                                                          command):
    monkeypatch.setitem(sys.modules, "openvino", None)  # Python's own way to make a module not importable
    code, _, err = run_cli(capsys, *[a.format(run=run, tmp=tmp_path / "out") for a in command])
    assert_one_line_error(code, err, "openvino needs OpenVINO and NNCF", OPENVINO_INSTALL)
    assert not (tmp_path / "out").exists()
