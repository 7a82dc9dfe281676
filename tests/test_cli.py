"""The `seqshard` command's help, as a newcomer reads it: every command and option says what it is for, and every
option with a default shows it (`seqshard --help`, `seqshard <command> --help`)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from seqshard.cli import create_parser

PARSER = create_parser()
COMMANDS = next(action for action in PARSER._actions if isinstance(action, argparse._SubParsersAction)).choices


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_says_what_it_is_for_and_shows_its_default(name: str) -> None:
    command = COMMANDS[name]
    shown = flat(command.format_help())
    assert shown.startswith(f"usage: seqshard {name} ")
    for action in command._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and action.help.strip(), f"seqshard {name} {label} has no help"
        assert flat(action.help) in shown or "%(" in action.help, label
        if action.default not in (None, False):
            # Appended by the formatter, or said by the help itself ("error, the default").
            said = "default" in action.help and str(action.default) in action.help
            assert said or f"{flat(action.help)} (default: {action.default})" in shown, f"seqshard {name} {label}"


def test_the_defaults_a_newcomer_asked_for_are_shown() -> None:
    embed = flat(COMMANDS["embed"].format_help())
    asked = ["model architecture (default: dnabert2)", "cuda or cuda:N (default: auto)",
             "CPU threads for torch (default: 1)", "[CLS] (default: mean)", "DNA only) (default: dna)"]  # fmt: skip
    for text in asked:
        assert text in embed, text
    assert "s3://bucket/prefix of a checkpoint or head" in flat(COMMANDS["fetch"].format_help())
    # Options without a value to show get no "(default: None)".
    assert "default: None" not in flat(" ".join(command.format_help() for command in COMMANDS.values()))


def test_the_top_level_help_lists_every_command_with_what_it_does() -> None:
    result = subprocess.run([sys.executable, "-m", "seqshard", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
    shown = flat(result.stdout)
    for name, command in COMMANDS.items():
        assert f"{name} {flat(command.description)}" in shown, name
