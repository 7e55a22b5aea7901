"""Bash completion for `ceres-supervisor`, generated from the argparse parser itself. Pure.

The script completes the subcommands, each one's options, the values of options and positionals
that have choices, files for FILE/PATH values, directories for DIR, and node names for NODE
arguments. Node names come from `completion nodes`, run on the file that `-c/--config` names on
the command line (else the default file).

Node names are read from a file someone else may have written, so the script never lets the
shell expand them: no `compgen -W` on them (it expands `$(...)`); candidates are filtered with a
plain prefix match. Every word written into the script is quoted with `shlex.quote`.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass
from typing import Final

FILE_METAVARS: Final = frozenset({"FILE", "PATH"})
DIR_METAVARS: Final = frozenset({"DIR"})
NODE_METAVAR: Final = "NODE"
VARIADIC: Final = frozenset({"*", "+", argparse.REMAINDER})


@dataclass(frozen=True)
class _Slot:
    """How to complete one value: `words` (choices), `file`, `dir`, `node` or `none`."""

    kind: str
    words: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Command:
    name: str
    options: tuple[str, ...]
    """Option strings shown (hidden options are still understood, not offered)."""
    valued: tuple[tuple[tuple[str, ...], _Slot], ...]
    """Each option that takes a value (its option strings), and how its value completes."""
    positionals: tuple[tuple[_Slot, bool], ...]
    """Each positional argument in order, and whether it takes any number of words."""


def _slot(action: argparse.Action) -> _Slot:
    if action.choices is not None:
        return _Slot("words", tuple(str(c) for c in action.choices))
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if metavar == NODE_METAVAR:
        return _Slot("node")
    if metavar in FILE_METAVARS:
        return _Slot("file")
    if metavar in DIR_METAVARS:
        return _Slot("dir")
    return _Slot("none")


def _subparsers(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _options(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    return tuple(
        option
        for action in parser._actions
        if action.option_strings and action.help != argparse.SUPPRESS
        for option in action.option_strings
    )


def _command(name: str, parser: argparse.ArgumentParser) -> _Command:
    valued = tuple(
        (tuple(action.option_strings), _slot(action))
        for action in parser._actions
        if action.option_strings and action.nargs != 0
    )
    positionals = tuple(
        (_slot(action), action.nargs in VARIADIC)
        for action in parser._actions
        if not action.option_strings and not isinstance(action, argparse._SubParsersAction)
    )
    return _Command(name, _options(parser), valued, positionals)


def _q(words: tuple[str, ...] | list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def _complete(slot: _Slot, fn: str) -> str:
    """The bash statement that completes `$cur` as `slot` says."""
    if slot.kind == "words":
        return f'{fn}_add "$cur" {_q(slot.words)}'
    if slot.kind == "file":
        return f'{fn}_files "$cur" -f'
    if slot.kind == "dir":
        return f'{fn}_files "$cur" -d'
    if slot.kind == "node":
        return f'{fn}_nodes "$cur"'
    return ":"  # a value we cannot guess (an address, a URL): nothing to offer


def _case(command: _Command, fn: str) -> list[str]:
    """The `case` arm of one subcommand."""
    lines = [f"        {shlex.quote(command.name)})"]
    if command.valued:
        lines.append("            case $prev in")
        for options, slot in command.valued:
            lines.append(
                f"                {' | '.join(map(shlex.quote, options))}) {_complete(slot, fn)}; return ;;"
            )
        lines.append("            esac")
    offer_options = f'{fn}_add "$cur" {_q(command.options)}'
    if not command.positionals:
        lines += [f"            {offer_options}", "            ;;"]
        return lines
    valued = [option for options, _slot in command.valued for option in options]
    lines += [
        "            if [[ $cur == -* ]]; then",
        f"                {offer_options}",
        "                return",
        "            fi",
        f"            case $({fn}_count {_q(valued)}) in",
    ]
    for index, (slot, variadic) in enumerate(command.positionals):
        lines.append(f"                {'*' if variadic else index}) {_complete(slot, fn)} ;;")
        if variadic:
            break
    else:
        lines.append(f"                *) {offer_options} ;;")
    lines += ["            esac", "            ;;"]
    return lines


_HELPERS: Final = """\
# The words of "$@" after the first that start with it (the first is the word being completed).
{fn}_add() {{
    local word
    for word in "${{@:2}}"; do
        [[ $word == "$1"* ]] && COMPREPLY+=("$word")
    done
}}

{fn}_files() {{
    compopt -o filenames 2>/dev/null
    local path
    while IFS= read -r path; do COMPREPLY+=("$path"); done < <(compgen "$2" -- "$1")
}}

# Node names of the file given with -c/--config on the line (else the default), never expanded.
{fn}_nodes() {{
    local prog=${{COMP_WORDS[0]:-{prog}}} i word name
    local -a config=()
    for ((i = 1; i < ${{#COMP_WORDS[@]}}; i++)); do
        word=${{COMP_WORDS[i]}}
        case $word in
            -c | --config)
                if [[ ${{COMP_WORDS[i + 1]}} == "=" ]]; then i=$((i + 1)); fi
                config=(-c "${{COMP_WORDS[i + 1]/#\\~/$HOME}}")
                ;;
            --config=?*) config=(-c "${{word#--config=}}") ;;
            -c?*) config=(-c "${{word#-c}}") ;;
        esac
    done
    while IFS= read -r name; do
        [[ -n $name && $name == "$1"* ]] && COMPREPLY+=("$name")
    done < <("${{prog/#\\~/$HOME}}" completion nodes "${{config[@]}}" 2>/dev/null)
}}

# How many positional words come after the subcommand; "$@" are the options that take a value.
{fn}_count() {{
    local valued=" $* " n=0 i word
    for ((i = {fn}_at + 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if [[ $valued == *" $word "* ]]; then
            i=$((i + 1))
            [[ ${{COMP_WORDS[i]}} == "=" ]] && i=$((i + 1))
        elif [[ $word != -* && $word != "=" ]]; then
            n=$((n + 1))
        fi
    done
    echo "$n"
}}
"""


def bash_script(parser: argparse.ArgumentParser) -> str:
    """The completion script: `source <(ceres-supervisor completion bash)`, or save it as
    /usr/share/bash-completion/completions/ceres-supervisor."""
    prog = parser.prog
    fn = "_" + "".join(c if c.isalnum() else "_" for c in prog)
    sub = _subparsers(parser)
    visible = [a.dest for a in sub._choices_actions] if sub is not None else []
    commands = [_command(name, p) for name, p in (sub.choices.items() if sub is not None else [])]
    lines = [
        f"# bash completion for {prog}, generated by `{prog} completion bash` from its own parser.",
        "",
        _HELPERS.format(fn=fn, prog=shlex.quote(prog)),
        f"{fn}() {{",
        "    COMPREPLY=()",
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]} cmd="" i',
        f"    local {fn}_at=0  # where the subcommand is (read by {fn}_count)",
        '    if [[ $cur == "=" ]]; then cur=""; fi',
        '    if [[ $prev == "=" && COMP_CWORD -ge 2 ]]; then prev=${COMP_WORDS[COMP_CWORD - 2]}; fi',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        if [[ ${COMP_WORDS[i]} != -* ]]; then",
        f"            cmd=${{COMP_WORDS[i]}} {fn}_at=$i",
        "            break",
        "        fi",
        "    done",
        "    if [[ -z $cmd ]]; then",
        f'        {fn}_add "$cur" {_q(visible + list(_options(parser)))}',
        "        return",
        "    fi",
        "    case $cmd in",
    ]
    for command in commands:
        lines += _case(command, fn)
    lines += ["    esac", "}", "", f"complete -F {fn} {shlex.quote(prog)}"]
    return "\n".join(lines)
