import os
import re
import subprocess
import sys

import numpy as np
import torch

from cli_helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the README and the references it links to


def _quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart -->\s*```bash\n(.*?)```", text, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_readme_quick_start_is_two_commands_and_ci_runs_exactly_them():
    commands = _quickstart_commands()
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    position = [ci.index(c) for c in commands]  # each appears verbatim as a line of .ci/run
    assert position == sorted(position)
    assert "python3 -m venv" in "\n".join(ci[: position[0]])  # in a fresh virtual environment


def test_the_recipe_reference_lists_every_key_with_its_default():
    import yaml

    from namprune.app.recipes import Recipe

    text = (ROOT / "docs" / "recipes.md").read_text()
    block = re.search(r"Recipe reference.*?```yaml\n(.*?)```", text, re.S).group(1)
    assert yaml.safe_load(block) == Recipe().model_dump(mode="json") | {"prune": {**Recipe().prune.model_dump(), "ratio": None}}


def test_every_shipped_recipe_is_in_the_recipe_docs():
    text = (ROOT / "docs" / "recipes.md").read_text()
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        assert f"`{recipe.stem}`" in text, recipe.stem


def test_every_python_block_of_the_docs_is_an_example_script_in_docs():
    # the scripts are what the tests below run, so the README and docs/*.md show code that runs
    shown = set()
    for doc in DOCS:
        blocks = re.findall(r"(?:<!-- example: (\S+) -->\n)?```python\n(.*?)```", doc.read_text(), re.S)
        for path, block in blocks:
            assert path, f"a Python block of {doc.name} is not marked as a docs/examples script: {block[:80]!r}"
            assert block == (ROOT / path).read_text(), (doc.name, path)
            shown.add(path)
    assert {"docs/examples/python_api.py", "docs/examples/bring_your_own_model.py"} <= shown


def test_every_relative_link_of_the_docs_points_to_a_file_that_exists():
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # links, not code
        targets = re.findall(r"\]\(([^)\s]+)\)", text)
        assert doc.name != "README.md" or len(targets) >= 10, targets
        for target in targets:
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            assert resolved.exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"
            if anchor and resolved.suffix == ".md":  # a heading of that file, as GitHub spells its anchors
                headings = re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)
                anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
                assert anchor in anchors, f"{doc.relative_to(ROOT)} links to {target}: no such heading in {path or doc.name}"


def test_every_python_name_the_docs_give_exists():
    """`namprune.core.deploy.timing.measure_latency` and the like: the module imports and has the name."""
    import importlib

    names = {name for doc in DOCS for name in re.findall(r"`(namprune(?:\.\w+)+)", doc.read_text())}
    assert len(names) >= 5, names
    for name in sorted(names):
        module, attribute = name, None
        while True:
            try:
                found = importlib.import_module(module)
                break
            except ModuleNotFoundError:
                module, _, rest = module.rpartition(".")
                attribute = rest if attribute is None else f"{rest}.{attribute}"
        for part in (attribute or "").split(".") if attribute else []:
            assert hasattr(found, part), f"{name}: {found.__name__} has no {part}"
            found = getattr(found, part)


def _run_example(name: str, tmp_path, *args) -> str:
    """Run docs/examples/<name> as a user would (a fresh process, in a scratch folder), on the
    short settings the examples read from NAMPRUNE_EXAMPLE_QUICK; returns its stdout."""
    env = {**os.environ, "NAMPRUNE_EXAMPLE_QUICK": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "examples" / name), *map(str, args)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_python_api_example_runs_and_prints_its_results(tmp_path):
    out = _run_example("python_api.py", tmp_path)
    assert re.search(r"^removed \d+% of \d+ channels$", out, re.M), out
    before = re.search(r"^sparse-trained +top-1 +[\d.]+ % +MACs +([\d.]+) M$", out, re.M)
    after = re.search(r"^pruned \+ fine-tuned +top-1 +[\d.]+ % +MACs +([\d.]+) M$", out, re.M)
    assert before and after, out
    assert float(after.group(1)) <= 0.52 * float(before.group(1))  # pruned to half of the MACs


def test_the_bring_your_own_model_example_runs_to_its_checked_onnx_file(tmp_path):
    out = _run_example("bring_your_own_model.py", tmp_path)
    assert "NAM after 8 layers: layer1.0.bn2, layer1.1.bn2, layer2.0.bn2, ..." in out
    macs = re.search(r"^top-1 [\d.]+ % -> [\d.]+ %, MACs ([\d.]+) M -> ([\d.]+) M$", out, re.M)
    assert macs and float(macs.group(2)) <= 0.52 * float(macs.group(1)), out
    assert "reloaded model gives the same outputs: True" in out
    onnx = re.search(r"^ONNX: [\d.]+ MiB, onnxruntime vs torch: max relative difference (\S+)$", out, re.M)
    assert onnx and float(onnx.group(1)) < 1e-4, out
    assert (tmp_path / "resnet18-pruned.onnx").is_file() and (tmp_path / "resnet18-pruned.export.json").is_file()


def _write_idx(path, array: np.ndarray) -> None:
    """An MNIST file (IDX: zero, type 0x08 = uint8, the number of dimensions, big-endian sizes, the bytes)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_the_pretraining_example_trains_and_saves_a_state_dict(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 256), ("t10k", 32)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, count))
    out = _run_example("pretrain_mnist.py", tmp_path, tmp_path / "data", "weights.pth")
    assert re.search(r"^step   0/2  loss [\d.]+$", out, re.M), out
    assert out.splitlines()[-1] == "saved weights.pth"
    state = torch.load(tmp_path / "weights.pth", weights_only=True)
    assert state["fc.weight"].shape == (10, 512)


def _shown_command_lines() -> list[tuple[str, str]]:
    """Every `namprune ...` command of a bash block, or `$ namprune ...` of a console block, in the
    README and docs/*.md (a line continued with a backslash joined to the next), with its file."""
    lines = []
    for doc in DOCS:
        for kind, block in re.findall(r"```(bash|console)\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if kind == "console" and not line.startswith("$ "):
                    continue  # the command's output
                words = line.removeprefix("$ ").split()
                if "namprune" in words:  # also after `pip install ... &&` and `torchrun ... -m`
                    lines.append((doc.name, " ".join(words[words.index("namprune"):])))
    return lines


def test_every_command_line_the_docs_show_uses_flags_the_command_has():
    """A renamed or removed flag cannot linger in a shown example: each `namprune CMD --flag`
    names a command and one of its options (or a global one: --debug, --accept-changed-model)."""
    import typer

    from namprune.cli import commands  # noqa: F401  (registers the commands)
    from namprune.cli.app import app

    group = typer.main.get_command(app)
    shown = _shown_command_lines()
    assert len(shown) >= 20, shown
    for doc, line in shown:
        words = line.split()
        if len(words) == 1:
            continue
        command = group.commands.get(words[1])
        assert command, f"{doc}: `{line}` names no namprune command"
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--debug", "--accept-changed-model"}
        for word in words[2:]:
            flag = word.split("=")[0]
            if flag.startswith("-") and not re.fullmatch(r"-\d.*", flag):
                assert flag in known, f"{doc}: `{line}`: {words[1]} has no {flag}"
