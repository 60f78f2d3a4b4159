"""The three things rollserve may do with an SGLang flag (frontend/flag_table.py says which,
flag by flag): implemented, no-op, refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

IMPLEMENTED, NOOP, REFUSED = "implemented", "no-op", "refused"
_SGLANG_DEFAULT = object()  # sentinel: report / accept SGLang's default


@dataclass(frozen=True)
class FlagPolicy:
    kind: str
    reason: str = ""
    instead: str = ""
    accept: Optional[Tuple[Any, ...]] = None  # refused: accepted values (None: SGLang's default)
    reports: Any = _SGLANG_DEFAULT  # what /get_server_info shows for a flag that is not ours

    def accepts(self, value: Any, sglang_default: Any) -> bool:
        if self.kind != REFUSED:
            return True
        allowed = (sglang_default,) if self.accept is None else self.accept
        return any(_same(value, ok) for ok in allowed)

    def reported(self, sglang_default: Any) -> Any:
        return sglang_default if self.reports is _SGLANG_DEFAULT else self.reports


def _same(value: Any, ok: Any) -> bool:
    if isinstance(ok, bool) or ok is None:
        return value is ok or (ok is None and value in ("None", "null"))
    return value == ok or str(value) == str(ok)


def implemented() -> FlagPolicy:
    return FlagPolicy(IMPLEMENTED)


def noop(why: str) -> FlagPolicy:
    return FlagPolicy(NOOP, reason=why)


def refused(reason: str, instead: str, accept: Optional[Tuple[Any, ...]] = None,
            reports: Any = _SGLANG_DEFAULT) -> FlagPolicy:
    return FlagPolicy(REFUSED, reason=reason, instead=instead, accept=accept, reports=reports)


def judge_value(flag, rule: FlagPolicy, value: Any) -> Tuple[bool, str]:
    """(accepted, one-line message) for SGLang flag `flag` (an SGLangFlag) given with
    `value`, when rollserve does not implement it."""
    shown = flag.name if flag.type == "bool" and value is True else f"{flag.name} {_show(value)}"
    if rule.kind == NOOP:
        return True, f"{shown}: accepted with no effect: {rule.reason}"
    if rule.accepts(value, flag.default):
        return True, (f"{shown}: accepted, it asks for what rollserve does (other values are "
                      f"refused: {rule.reason})")
    return False, f"{shown}: {rule.reason}; instead: {rule.instead}"


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)
