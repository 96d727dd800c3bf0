"""A subcommand's mistake shows that subcommand's usage; every --help shows the defaults."""

from __future__ import annotations

import argparse

import pytest

from negstream.cli import build_parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_an_unknown_option_shows_the_subcommand_usage(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every positional argument given (its first choice, or any word), so that only the
    # unknown option is wrong.
    positionals = [
        str(sorted(action.choices)[0]) if action.choices else "x"
        for action in subcommands()[name]._actions
        if not action.option_strings and action.nargs != argparse.SUPPRESS
    ]
    argv = [name, *positionals, "--bogus"]
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: negstream {name} ")
    assert f"negstream {name}: error: unrecognized arguments: --bogus" in err


def test_a_missing_argument_shows_the_subcommand_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["schema"])
    assert capsys.readouterr().err.startswith("usage: negstream schema ")


def test_a_top_level_mistake_shows_the_top_level_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--bogus", "worker"])
    assert capsys.readouterr().err.startswith("usage: negstream [-h]")


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_help_shows_every_default(name: str) -> None:
    parser = subcommands()[name]
    text = parser.format_help()
    for action in parser._actions:
        if action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            continue
        assert f"(default: {action.default})" in " ".join(text.split()), action.dest


def test_simulate_help_shows_its_size(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: 10000 uniform, 50000 heavy" in text and "(default: uniform)" in text
