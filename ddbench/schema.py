"""Declared rules for the keys of method configs and protocol cards, checked before any work starts.

Every key a card can hold has a rule beside the code that reads it: a method class's `schema` (next to its
`defaults`), a protocol family's `schema`. The resolved config (class defaults < card < dataset section <
`--set`) is validated as a whole, so a word where a number belongs, a list key given a scalar or a zero
temperature is one line naming key, value and what is allowed, before any distillation, and a key without a
rule is refused (the registry-wide test catches it when a card gains one).

Rules are short strings (combine alternatives with `|`, end with `?` to also allow null):

    int  int>=1  int>0  int[0..49]        whole numbers (true/false are not numbers)
    float  float>=0  float>0  float[0..1]  real numbers (a whole number is a real number)
    prob                                   a real number in 0..1
    bool  str  path  dict                  true/false, a word, a file or folder, any mapping
    choice[a|b|c]                          one of these words
    ops[a|b|c]                             one or more of these words joined by '_' (e.g. color_crop)
    arch                                   a network name of `ddbench list archs` (or timm:<name>)
    list[RULE]  tuple[RULE, RULE]          a list of any length / of exactly these entries
    int>=1 | choice[all]   dict?           alternatives; nullable

A nested mapping of known keys is a dict of rules; `Section(rules, nullable=True)` also allows null,
`Section(rules, instead="choice[shared]")` a value of that rule in place of the mapping.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError


@dataclass(frozen=True)
class Section:
    """A nested mapping whose keys each have a rule; `nullable`: null stands for "the default" (e.g. the base's)."""

    rules: Mapping
    nullable: bool = False
    instead: str | None = None  # a rule a value may meet instead of being the mapping (e.g. `choice[shared]`)


def nullable(rules):
    """The same rules with null also allowed: a rule string gains `?`, a mapping becomes a nullable Section."""
    if isinstance(rules, str):
        return rules if rules.endswith("?") else rules + "?"
    return Section(rules.rules if isinstance(rules, Section) else rules, nullable=True)


def choice(words) -> str:
    """`choice[a|b]` from a sequence of words (rules built from the constants the code checks against)."""
    return f"choice[{'|'.join(map(str, words))}]"


# ---------------------------------------------------------------------------------------------------------
# One value against one rule string
# ---------------------------------------------------------------------------------------------------------

_NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"
_BOUND = re.compile(rf"^(int|float)(?:(>=|>)({_NUMBER})|\[({_NUMBER})\.\.({_NUMBER})\])?$")


def _split(text: str, sep: str) -> list[str]:
    """Split at `sep` outside brackets: 'int | choice[a|b]' -> ['int', 'choice[a|b]']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


def _is_number(value, whole: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if whole else value == value  # NaN is no number a card can use


def _number_ok(m: re.Match, value) -> bool:
    kind, op, bound, lo, hi = m.groups()
    if not _is_number(value, kind == "int"):
        return False
    if op == ">=":
        return value >= float(bound)
    if op == ">":
        return value > float(bound)
    return lo is None or float(lo) <= value <= float(hi)


def _atom_ok(atom: str, value) -> bool:
    m = _BOUND.match(atom)
    if m:
        return _number_ok(m, value)
    head, _, inner = atom.partition("[")
    inner = inner[:-1] if inner.endswith("]") else inner
    if head == "prob":
        return _is_number(value, False) and 0 <= value <= 1
    if head == "bool":
        return isinstance(value, bool)
    if head in ("str", "path"):
        return isinstance(value, str) and value.strip() != ""
    if head == "dict":
        return isinstance(value, Mapping)
    if head == "choice":
        return isinstance(value, str) and value in _split(inner, "|")
    if head == "ops":
        words = _split(inner, "|")
        return isinstance(value, str) and value != "" and all(p in words for p in value.split("_"))
    if head == "arch":
        return isinstance(value, str) and _is_arch(value)
    if head == "list":
        return isinstance(value, list) and all(check_rule(inner, v) for v in value)
    if head == "tuple":
        rules = _split(inner, ",")
        return isinstance(value, list) and len(value) == len(rules) and all(map(check_rule, rules, value))
    raise ValueError(f"unknown rule {atom!r} (see ddbench/schema.py for the vocabulary)")


def _is_arch(name: str) -> bool:
    from .nets.build import ARCHS, TIMM_PREFIX  # imported here: reading a rule must not import every network

    return name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX) or name in ARCHS.names()


def check_rule(rule: str, value) -> bool:
    """Whether `value` satisfies `rule` (a malformed rule is a bug in the schema: ValueError)."""
    rule = rule.strip()
    if rule.endswith("?"):
        if value is None:
            return True
        rule = rule[:-1]
    return any(_atom_ok(atom, value) for atom in _split(rule, "|"))


def describe(rule: str) -> str:
    """What a rule allows, in words: 'int>=1 | choice[all]?' -> 'a whole number ≥ 1, or all, or null'."""
    rule = rule.strip()
    words = [_describe_atom(a) for a in _split(rule.rstrip("?"), "|")]
    return ", or ".join(words + (["null"] if rule.endswith("?") else []))


def _describe_atom(atom: str) -> str:
    m = _BOUND.match(atom)
    if m:
        kind, op, bound, lo, hi = m.groups()
        noun = "a whole number" if kind == "int" else "a number"
        if op:
            return f"{noun} {'≥' if op == '>=' else '>'} {bound}"
        return f"{noun} in {lo}..{hi}" if lo is not None else noun
    head, _, inner = atom.partition("[")
    inner = inner[:-1]
    simple = {"prob": "a number in 0..1", "bool": "true or false", "str": "a word", "path": "a file or folder path",
              "dict": "a mapping like {key: value}", "arch": "a network name (ddbench list archs)"}
    if head in simple:
        return simple[head]
    if head == "choice":
        words = _split(inner, "|")
        return f"the word {words[0]}" if len(words) == 1 else "one of " + ", ".join(words)
    if head == "ops":
        return "one or more of " + ", ".join(_split(inner, "|")) + " joined by '_'"
    if head == "list":
        return f"a list [...] whose every entry is {describe(inner)}"
    if head == "tuple":
        rules = _split(inner, ",")
        return f"a list of {len(rules)} entries: " + ", ".join(f"({describe(r)})" for r in rules)
    raise ValueError(f"unknown rule {atom!r} (see ddbench/schema.py for the vocabulary)")


# ---------------------------------------------------------------------------------------------------------
# A whole config against a schema
# ---------------------------------------------------------------------------------------------------------


UNKNOWN = "no rule: "  # how errors() marks a key without a rule (what follows lists the known keys)


def errors(cfg: Mapping, rules: Mapping, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, what is allowed) for every value of `cfg` that breaks its rule; a key without a rule
    gets UNKNOWN + the known keys of its level."""
    out = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if key not in rules:
            out.append((name, value, f"{UNKNOWN}known keys: {', '.join(sorted(map(str, rules)))}"))
            continue
        rule = rules[key]
        if isinstance(rule, str):
            if not check_rule(rule, value):
                out.append((name, value, describe(rule)))
            continue
        section = rule if isinstance(rule, Section) else Section(rule)
        if value is None and section.nullable:
            continue
        if section.instead is not None and not isinstance(value, Mapping) and check_rule(section.instead, value):
            continue
        if not isinstance(value, Mapping):
            keys = ", ".join(sorted(section.rules))
            out.append((name, value, f"a mapping of {keys}" + (", or null" if section.nullable else "")
                        + (f", or {describe(section.instead)}" if section.instead else "")))
            continue
        out += errors(value, section.rules, f"{name}.")
    return out


def validate(cfg: Mapping, rules: Mapping, *, where: str, overridden: Mapping | None = None,
             card: Mapping | None = None, prefix: str = "") -> None:
    """Raise one ConfigError with one line per bad value. `overridden`: the `--set` overrides (a line names the
    flag when the value came from one), `card`: the config without them (its value is shown as the default);
    `prefix`: how the user names this level on the command line (e.g. "protocol.")."""
    bad = errors(cfg, rules)
    if not bad:
        return
    lines = []
    for key, value, allowed in bad:
        given = _lookup(overridden or {}, key) is not _MISSING
        if allowed.startswith(UNKNOWN):
            known = allowed[len(UNKNOWN):]
            lines.append(f"--set {prefix}{key}=...: there is no such key; {known}" if given else
                         f"{where}: {key}={value!r} in the card has no declared rule; declare one in the `schema` "
                         f"beside the code that reads it (docs/protocols.md#card-rules); {known}")
        elif given:
            was = _lookup(card or {}, key)
            short = was is not _MISSING and was is not None and not isinstance(was, Mapping) and len(repr(was)) < 60
            shown = f" ({where} has {was!r})" if short else ""
            lines.append(f"--set {prefix}{key}={value!r}: expected {allowed}{shown}")
        else:
            lines.append(f"{where}: {key}={value!r} in the card: expected {allowed}; correct the card")
    raise ConfigError("\n".join(lines))


_MISSING = object()


def _lookup(d: Mapping, dotted: str):
    """The value at `a.b.c` in nested mappings, or _MISSING."""
    node = d
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def check_schema(rules: Mapping, where: str) -> None:
    """Every rule string of a schema parses (a typo in a rule is a bug: the registry-wide test calls this)."""
    for key, rule in rules.items():
        if isinstance(rule, str):
            try:
                describe(rule)
            except ValueError as e:
                raise AssertionError(f"{where}: rule of {key!r} is malformed: {e}") from None
        else:
            check_schema(rule.rules if isinstance(rule, Section) else rule, f"{where}.{key}")
