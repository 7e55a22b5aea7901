"""Resolving `{ env = ... }` / `{ file = ... }` references. The only module that reads them.

A resolved value is returned to the caller and never logged; every message here names the
reference (variable or file), never the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ceres_supervisor.model.errors import Problem, SecretError
from ceres_supervisor.model.spec import DesiredState, SecretRef, secret_refs


def resolve(ref: SecretRef, environ: Mapping[str, str] | None = None) -> str:
    """The value behind `ref`. A file's single trailing newline is dropped (as `echo` writes).
    The reference is quoted in every message (`!r`): a name may hold a line break or a control
    character, and a message is printed as one line."""
    if ref.env is not None:
        env = os.environ if environ is None else environ
        if ref.env not in env:
            raise SecretError(f"environment variable {ref.env!r} is not set")
        value = env[ref.env]
    else:
        assert ref.file is not None
        try:
            with open(ref.file, encoding="utf-8") as handle:
                value = handle.read().removesuffix("\n")
        except OSError as err:
            raise SecretError(f"cannot read secret file {ref.file!r}: {err.strerror or err}") from None
        except UnicodeDecodeError:
            raise SecretError(f"secret file {ref.file!r} is not UTF-8 text") from None
    if not value:
        raise SecretError(f"{ref.describe()} is empty")
    return value


def check_available(spec: DesiredState) -> list[Problem]:
    """One problem per reference that cannot be resolved now."""
    problems = []
    for path, ref in secret_refs(spec):
        try:
            resolve(ref)
        except SecretError as err:
            problems.append(Problem(path, str(err)))
    return problems
