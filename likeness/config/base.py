"""What every stage's settings share: the refusal of settings (`InvalidSettings`), the advice on limits, prompt
templates and seeds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from string import Formatter
from typing import Annotated

from pydantic import AfterValidator, ValidationError

from likeness.inputs import InvalidInput

# The names a prompt template may use, as {name}; values come from the run (the trigger word today).
PROMPT_PLACEHOLDERS: frozenset[str] = frozenset({"trigger"})
# 32-bit seeds, like the per-variation seeds the dataset derives: every generator takes them (numpy's
# legacy seeding stops at 2**32) and they survive JSON in Prefect's UI, whose numbers are doubles.
SEED_RANGE = 2**32
SOFT_ADVICE = "pass --beyond-limits to go past it deliberately"
HARD_ADVICE = "--beyond-limits does not lift hard limits"


class InvalidSettings(InvalidInput):
    """Settings Likeness refuses before any work, one line per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))

    @classmethod
    def from_validation_error(cls, error: ValidationError) -> InvalidSettings:
        """pydantic's errors as one line each: the setting's path, its value where it is one, the message."""
        problems = []
        for detail in error.errors(include_url=False):
            path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in detail["loc"]).lstrip(".")
            message = detail["msg"].removeprefix("Value error, ")
            value = detail.get("input")
            if detail["type"] == "extra_forbidden":
                problems.append(f"{path}: unknown setting")
            elif not path:
                problems.extend(message.splitlines())
            elif isinstance(value, str | int | float):
                problems.append(f"{path}={_shown(value)}: {message}")
            else:
                problems.append(f"{path}: {message}")
        return cls(problems)


def _shown(value: str | float) -> str:
    """A value for a one-line message, as JSON: strings quoted, control characters escaped, long ones cut."""
    if isinstance(value, str) and len(value) > 80:
        value = value[:77] + "..."
    return json.dumps(value, ensure_ascii=False)


def _allowed_placeholders() -> str:
    names = sorted(f"{{{name}}}" for name in PROMPT_PLACEHOLDERS)
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)


def template_problem(template: str) -> str | None:
    """What is wrong with a prompt template, or None: it may hold only {name} for names in PROMPT_PLACEHOLDERS."""
    try:
        fields = [
            (name, spec, conversion) for _, name, spec, conversion in Formatter().parse(template) if name is not None
        ]
    except ValueError as exc:
        return f"unbalanced braces ({exc}); write {{{{ and }}}} for literal braces"
    use = f"use {_allowed_placeholders()}"
    for name, spec, conversion in fields:
        written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        base = name.partition(".")[0].partition("[")[0]
        if not base or base.isdigit():
            return f"positional field {written} is not allowed; {use}"
        if base != name:
            return f"attribute or index access in {written} is not allowed; {use}"
        if name not in PROMPT_PLACEHOLDERS:
            return f"unknown placeholder {written}; {use} (write {{{{ and }}}} for literal braces)"
        if conversion:
            return f"conversion !{conversion} in {written} is not allowed; {use}"
        if spec:
            return f"format spec :{spec} in {written} is not allowed; {use}"
    return None


def render_template(template: str, **values: str) -> str:
    """The prompt `template` with its placeholders filled from `values`; `{{` and `}}` are literal braces."""
    problem = template_problem(template)
    if problem:
        raise InvalidSettings([f"{_shown(template)}: {problem}"])
    parts = []
    for literal, name, _, _ in Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            if name not in values:
                raise ValueError(f"prompt template {_shown(template)} needs a value for {{{name}}}")
            parts.append(values[name])
    return "".join(parts)


def _checked_template(template: str) -> str:
    problem = template_problem(template)
    if problem:
        raise ValueError(problem)
    return template


def _checked_seed(seed: int) -> int:
    if not 0 <= seed < SEED_RANGE:
        raise ValueError(
            f"a seed must be 0 to {SEED_RANGE - 1} (32 bits), the range every generator takes; {HARD_ADVICE}"
        )
    return seed


PromptTemplate = Annotated[str, AfterValidator(_checked_template)]
Seed = Annotated[int, AfterValidator(_checked_seed)]
