"""Sizes as people write them ('10GB', '1.5GiB') and as a program prints them."""

from __future__ import annotations

import re
from decimal import Decimal

from scratchllm.util.errors import UserError

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Turn '10GB', '1.5GiB', '500KB' or '1234' into a number of bytes (KB=1000, KiB=1024)."""
    if isinstance(text, int):
        if text < 0:
            raise UserError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise UserError(
            f"bad size {text!r}: use a number with an optional unit "
            "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 500MB or 1.5GiB"
        )
    # Decimal, not float: in binary floating point '1.005KB' would come out as 1004 bytes.
    return int(Decimal(m.group(1)) * _UNITS[m.group(2).upper()])


def format_size(n: float) -> str:
    """Bytes as a short human string in powers of 1000 ('1.23 GB')."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
