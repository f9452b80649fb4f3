"""Sparsity patterns: parsing the user's spec and describing what a mask must satisfy.

Pure Python and torch; nothing here knows about models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..fields import SettingError, setting

ACCEPTED_FORMS = (
    "N:M with 0 < N < M (e.g. 2:4, 4:8, 1:4), or an unstructured fraction "
    "strictly between 0 and 1 (e.g. 0.5 or 50%)"
)

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class SparsityPattern:
    """What fraction of a weight is zeroed, and how the zeros are arranged.

    ``n`` and ``m`` are set for N:M patterns (keep ``n`` of every ``m`` consecutive
    weights along the input dimension); ``fraction`` is the share of zeros.

    Example:
        >>> parse_sparsity("2:4")
        SparsityPattern(fraction=0.5, n=2, m=4)
        >>> parse_sparsity("70%").fraction
        0.7
    """

    fraction: float
    n: int | None = None
    m: int | None = None

    @property
    def is_nm(self) -> bool:
        """True for N:M semi-structured patterns."""
        return self.m is not None

    def __str__(self) -> str:
        if self.is_nm:
            return f"{self.n}:{self.m}"
        return f"{self.fraction:g}"

    @property
    def label(self) -> str:
        """How people write it: ``2:4`` or ``50%``.

        Example:
            >>> parse_sparsity("0.5").label, parse_sparsity("2:4").label
            ('50%', '2:4')
        """
        return str(self) if self.is_nm else f"{self.fraction * 100:g}%"


def parse_sparsity(spec: str | float | SparsityPattern) -> SparsityPattern:
    """Parse ``2:4``, ``4:8``, ``1:4`` (N:M) or ``0.5`` / ``50%`` (unstructured).

    Raises ``ValueError`` naming the accepted forms for anything else.

    Example:
        >>> parse_sparsity("4:8").n, parse_sparsity("4:8").m
        (4, 8)
        >>> parse_sparsity(0.25).fraction
        0.25
    """
    if isinstance(spec, SparsityPattern):
        return spec
    text = str(spec).strip()
    match = _NM.match(text)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise SettingError(f"invalid sparsity {text!r}", field="sparsity", hint=f"use {ACCEPTED_FORMS}")
        return SparsityPattern(fraction=1.0 - n / m, n=n, m=m)
    try:
        fraction = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise SettingError(f"invalid sparsity {text!r}", field="sparsity", hint=f"use {ACCEPTED_FORMS}") from None
    if not 0.0 < fraction < 1.0:  # also rejects nan
        raise SettingError(f"invalid sparsity {text!r}", field="sparsity", hint=f"use {ACCEPTED_FORMS}")
    return SparsityPattern(fraction=fraction)


def check_fits(pattern: SparsityPattern, shape: tuple[int, int], name: str = "this layer") -> None:
    """Refuse a pattern a ``(rows, inputs)`` weight cannot take.

    N:M: every group of M consecutive inputs keeps N, so a layer needs at least M inputs
    (input channels, for a convolution); a narrower one would be one partial group, which
    is no N:M layout at all, and keeps nothing when ``N * inputs / M`` rounds to zero
    (1:100 on 32 inputs). Unstructured: the rounded zero count (``round(fraction *
    numel)``) must leave a weight.

    Example:
        >>> check_fits(parse_sparsity("2:4"), (64, 4))
        >>> check_fits(parse_sparsity("1:100"), (64, 32), "fc1")
        Traceback (most recent call last):
        ...
        snows_hf.fields.SettingError: sparsity 1:100 groups 100 inputs, but fc1 has only 32; choose M <= 32 or leave fc1 out (ignore)
    """
    rows, cols = shape
    numel = rows * cols
    if pattern.is_nm and cols < pattern.m:
        raise SettingError(f"sparsity {pattern} groups {pattern.m} inputs, but {name} has only {cols}", field="sparsity",
                           hint=f"choose M <= {cols} or leave {name.rsplit('.', 1)[-1]} out ({setting('ignore')})")
    if not pattern.is_nm and round(pattern.fraction * numel) >= numel:  # the zero count select_topk uses
        raise SettingError(f"sparsity {pattern.label} would zero all {numel} weights of {name} ({rows} x {cols})",
                           field="sparsity", hint=f"use a fraction below {(numel - 0.5) / numel:.6g}")
