import subprocess
import sys

from click.testing import CliRunner

from synth.cli import COMMANDS, main
from tests.launch import python_env


def test_help_lists_every_subcommand_with_its_summary():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Render cut-transform-paste composites" in result.output
    assert "Generate the embedded demo data" in result.output
    assert "Print statistics of shards" in result.output
    assert set(COMMANDS) == {"demo-data", "render", "inspect"}


def test_each_subcommand_runs_through_the_group():
    for name in COMMANDS:
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert f"synth {name}" in result.output


def test_unknown_subcommand_is_refused():
    result = CliRunner().invoke(main, ["rendr"])
    assert result.exit_code == 2
    assert "No such command 'rendr'" in result.output


def test_render_helpers_import_only_what_rendering_needs():
    """A render helper re-imports the `synth` script's module, then `synth.render`: neither may
    pull in the demo generator, the inspector or the progress bar (~0.1 s each helper)."""
    code = (
        "import sys, synth.cli, synth.render; "
        "loaded = {'synth.demo', 'synth.xray', 'synth.inspect', 'tqdm'} & set(sys.modules); "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=python_env()
    )
    assert result.returncode == 0, result.stderr
