"""From parsed arguments to the options dataclasses the library functions take."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def options_from(args: Any, cls: type[T], **overrides: Any) -> T:
    """``cls`` filled from the attributes of ``args`` with its fields' names (argparse's dest names
    are the option names); fields ``args`` lacks keep their defaults; ``overrides`` win."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})
