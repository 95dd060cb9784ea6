"""The kernels' tuning hooks from the environment: a variable holding a JSON object of settings, read once at import
(``decode_linear``'s ARCHZOO_DECODE_LINEAR_CONFIG, ``moe_grouped``'s ARCHZOO_MOE_GROUPED_CONFIG), so that a process
started with a setting runs it without editing the code: how a benchmark times a setting before it becomes a
default, and how a configuration tuned for another GPU applies."""

from __future__ import annotations

import json


def json_settings(text: str | None, env: str, what: str, known: set[str]) -> dict:
    """``env``'s value -> its settings ({} when unset or blank); ValueError naming ``env`` and what is wrong: not
    JSON, not an object, or keys outside ``known`` (the values are the caller's to check). ``what`` names the
    settings in the message ("decode GEMV settings")."""
    if not text or not text.strip():
        return {}
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{env} must be a JSON object of {what}; {text!r}: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{env} must be a JSON object of {what}, e.g. '{{\"{min(known)}\": 1}}'; got {text!r}")
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{env}: unknown keys {unknown}; the keys are {sorted(known)}")
    return cfg


__all__ = ["json_settings"]
