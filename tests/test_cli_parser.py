"""The command line: BIDS-App arguments, aliases, checks bound to the parser (exit 2)."""

import json

import pytest

from bids_qsm.cli.parser import _build_parser, _stage_choices, parse_args
from bids_qsm.cli.run import main
from bids_qsm.config import Settings, Workflow


@pytest.fixture
def bids_dir(tmp_path):
    path = tmp_path / "bids"
    path.mkdir()
    return path


def test_defaults_and_prefix_stripping(bids_dir, tmp_path):
    settings, verbosity = parse_args(
        [str(bids_dir), str(tmp_path / "out"), "participant",
         "--participant-label", "sub-01", "02", "01", "--session_label", "ses-a"]
    )  # fmt:skip
    assert settings.execution.participant_label == ["01", "02"]
    assert settings.execution.session_label == ["a"]
    assert settings.execution.bids_dir == bids_dir
    assert settings.workflow == Workflow()
    assert verbosity == 0


def test_every_default_method_is_a_choice():
    choices = _stage_choices()
    defaults = Workflow()
    assert defaults.mask in choices["mask_method"]
    assert defaults.unwrap in choices["unwrap_method"]
    assert defaults.combine in choices["combine_method"]
    assert defaults.relaxometry in choices["r2star_method"]
    assert defaults.background in choices["background_method"]
    assert defaults.inversion in choices["inversion_method"]
    assert defaults.reference in choices["reference"]
    assert defaults.phase_units in choices["phase_units"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--nprocs", "0"],
        ["--mem", "lots"],
        ["--inversion-method", "magic"],
        ["--phase-sign", "2"],
        ["--participant-label", "sub-0_1"],
        ["--plugin-args", "[1, 2]"],
        ["--nipype-plugin", "Nonexistent"],
        ["--bids-filter-file", "/does/not/exist.json"],
        ["--omp-nthreads", "4", "--nprocs", "2"],
    ],
)
def test_bad_arguments_exit_2(bids_dir, tmp_path, extra, capsys):
    assert main([str(bids_dir), str(tmp_path / "out"), "participant", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bids_qsm: error:")


def test_missing_bids_dir_and_bad_level_exit_2(tmp_path):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == 2
    assert main([str(tmp_path), str(tmp_path / "out"), "everything"]) == 2


def test_output_inside_input_is_refused(bids_dir):
    assert main([str(bids_dir), str(bids_dir), "participant"]) == 2
    assert main([str(bids_dir), str(bids_dir / "sub-01"), "participant"]) == 2
    settings, _ = parse_args([str(bids_dir), str(bids_dir / "derivatives" / "qsm"), "participant"])
    assert settings.execution.output_dir == bids_dir / "derivatives" / "qsm"


def test_memory_units_and_json_options(bids_dir, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"acquisition": "qsm"}))
    settings, _ = parse_args(
        [str(bids_dir), str(tmp_path / "o"), "participant", "--mem", "16000MB",
         "--bids-filter-file", str(filters), "--plugin-args", '{"sbatch_args": "-p short"}',
         "--nipype-plugin", "SLURM"]
    )  # fmt:skip
    assert settings.nipype.mem_gb == 16.0
    assert settings.execution.bids_filters == {"acquisition": "qsm"}
    assert settings.nipype.plugin_settings() == {
        "plugin": "SLURM",
        "plugin_args": {"sbatch_args": "-p short"},
    }


def test_config_file_round_trip_with_command_line_precedence(bids_dir, tmp_path):
    saved = Settings()
    saved.workflow.background = "vsharp"
    saved.nipype.nprocs = 3
    saved.execution.participant_label = ["07"]
    path = saved.to_toml(tmp_path / "config.toml")
    settings, _ = parse_args(
        [str(bids_dir), str(tmp_path / "o"), "participant", "--config-file", str(path),
         "--nprocs", "2"]
    )  # fmt:skip
    assert settings.nipype.nprocs == 2
    assert settings.execution.participant_label == ["07"]
    assert Settings.from_toml(settings.to_toml(tmp_path / "again.toml")) == settings


def test_config_file_with_unknown_key_exits_2(bids_dir, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[workflow]\ninversion_algo = 'tgv'\n")
    assert (
        main([str(bids_dir), str(tmp_path / "o"), "participant", "--config-file", str(path)]) == 2
    )


def test_help_lists_the_bids_app_arguments():
    text = _build_parser().format_help()
    for option in ("--participant-label", "--session-label", "--bids-filter-file", "--work-dir",
                   "--nprocs", "--omp-nthreads", "--mem", "--nipype-plugin", "--plugin-args",
                   "--skip-bids-validation", "--config-file", "--inversion-method"):  # fmt:skip
        assert option in text
