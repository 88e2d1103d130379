"""Conditions with a correct lastTransitionTime, and observedGeneration."""
from datetime import datetime, timezone
from typing import Optional


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, status: bool, reason: str, message: str, observed_generation: Optional[int]) -> dict:
    c = {"type": type_, "status": "True" if status else "False", "reason": reason,
         "message": message, "lastTransitionTime": now()}
    if observed_generation is not None:
        c["observedGeneration"] = observed_generation
    return c


def set_condition(conditions: list, cond: dict) -> bool:
    """Sets by type; keeps lastTransitionTime unless the status changes. True if it changed or is new."""
    for i, existing in enumerate(conditions):
        if existing.get("type") == cond["type"]:
            changed = existing.get("status") != cond["status"]
            if not changed and "lastTransitionTime" in existing:
                cond = {**cond, "lastTransitionTime": existing["lastTransitionTime"]}
            conditions[i] = cond
            return changed
    conditions.append(cond)
    return True


def is_true(conditions: list, type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def generation(obj: dict) -> Optional[int]:
    return obj.get("metadata", {}).get("generation")
