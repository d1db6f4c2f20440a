import re

from cli_helpers import ROOT


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

    text = (ROOT / "README.md").read_text()
    block = re.search(r"Recipe reference.*?```yaml\n(.*?)```", text, re.S).group(1)
    assert yaml.safe_load(block) == Recipe().model_dump(mode="json") | {"prune": {**Recipe().prune.model_dump(), "ratio": None}}


def test_every_shipped_recipe_is_in_the_readme():
    text = (ROOT / "README.md").read_text()
    for recipe in (ROOT / "recipes").glob("*.yaml"):
        assert f"`{recipe.stem}`" in text, recipe.stem


def test_the_bring_your_own_model_example_is_the_script_in_docs():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- byom-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    assert block == (ROOT / "docs" / "examples" / "bring_your_own_model.py").read_text()
