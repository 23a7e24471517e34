"""Rollback specs generated from the committed CRD's own schema (hypothesis-jsonschema), and
mutations of them that break one thing each.

The CRD's openAPIV3Schema says most of what the API server checks; what JSON Schema cannot say
in the same words is translated here:

- CEL rules (`x-kubernetes-validations`): each rule the CRD has is translated to an equivalent
  JSON Schema (or one slightly stricter, noted where so). A rule this file does not know fails
  loudly: the generator would otherwise produce specs the server refuses, and call them valid.
- `x-kubernetes-int-or-string`: an integer or a string.
- `x-kubernetes-list-type: map`: the keys are unique; generated lists are de-duplicated by key.
- Patterns are Go's RE2, matched by the server against the whole string: `$` is the end of the
  text (Python's `$` also matches before a final newline, so it becomes `\\Z`), and `\\s` is
  ASCII whitespace (Python's is Unicode's), so `[^\\s]` becomes `[^\\t\\n\\f\\r ]` (but see
  GO_WHITESPACE_ONLY).
- Integers without a bound are int64 on the server; they get int64's bounds.
"""

from __future__ import annotations

import copy
import os
import re
from functools import lru_cache
from pathlib import Path

import yaml
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "rollbacks.rewind.dev.yaml"
INT64 = 2**63 - 1
# False while the model and the CRD disagree on \s (see test_schema_model.py): the generator
# then keeps to strings both accept, so the property tests can find anything else.
GO_WHITESPACE_ONLY = True


def _required(*names: str) -> dict:
    return {"required": list(names)}


def _not_both(a: str, b: str) -> dict:
    return {"not": _required(a, b)}


def _exactly_one(*names: str) -> dict:
    return {"oneOf": [_required(n) for n in names]}


# CEL rule (exactly as in the CRD) -> the same rule in JSON Schema, applied to the object the rule
# is declared on.
CEL_AS_JSON_SCHEMA: dict[str, dict] = {
    "type(self) == int ? self >= 1 : self == 'previous'":
        {"anyOf": [{"type": "integer", "minimum": 1, "maximum": INT64}, {"const": "previous"}]},
    "!self.split('/').exists(p, p == '..')":
        {"not": {"pattern": r"(^|/)\.\.(/|\Z)"}},
    # preRollbackBackup defaults to true before the rule runs.
    "self.preRollbackBackup || has(self.waiveBackupReason)":
        {"anyOf": [{"not": _required("preRollbackBackup")},
                   {"properties": {"preRollbackBackup": {"const": True}}},
                   _required("waiveBackupReason")]},
    "has(self.toRevision) != has(self.fromSecret)": _exactly_one("toRevision", "fromSecret"),
    "[has(self.persistentVolumeClaim), has(self.s3), has(self.keptDatabase)].filter(x, x).size() == 1":
        _exactly_one("persistentVolumeClaim", "s3", "keptDatabase"),
    # preRollbackBackup defaults to true before the rule runs: only an explicit false waives it.
    "!has(self.restoreFrom.keptDatabase) || has(self.backupTo) || !self.preRollbackBackup":
        {"anyOf": [{"properties": {"restoreFrom": {"not": _required("keptDatabase")}}},
                   _required("backupTo"),
                   {**_required("preRollbackBackup"), "properties": {"preRollbackBackup": {"const": False}}}]},
    "has(self.s3) ? !has(self.claimName) && !has(self.path) : has(self.claimName) && has(self.path)":
        {"oneOf": [{**_required("s3"), "not": {"anyOf": [_required("claimName"), _required("path")]}},
                   {**_required("claimName", "path"), "not": _required("s3")}]},
    "!(has(self.caFromSecret) && self.caFromSecret && has(self.pinnedFingerprintSha256))":
        {"not": {**_required("caFromSecret", "pinnedFingerprintSha256"),
                 "properties": {"caFromSecret": {"const": True}}}},
    "!has(self.jsonEquals) || has(self.jsonPath)":
        {"anyOf": [{"not": _required("jsonEquals")}, _required("jsonPath")]},
    # Stricter than the rule (which allows both when minRows <= maxRows): JSON Schema cannot
    # compare two values. The generator then never sets both; the mutations do.
    "!has(self.minRows) || !has(self.maxRows) || self.minRows <= self.maxRows":
        _not_both("minRows", "maxRows"),
    "!has(self.equals) || (!has(self.minRows) && !has(self.maxRows))":
        {"not": {**_required("equals"), "anyOf": [_required("minRows"), _required("maxRows")]}},
    # security defaults to StartTLS before the rule runs.
    "self.smtp.security != 'None' || !has(self.smtp.credentialsSecretRef)":
        {"not": {"properties": {"smtp": {**_required("security", "credentialsSecretRef"),
                                         "properties": {"security": {"const": "None"}}}}}},
    "[has(self.slack), has(self.webhook), has(self.email)].filter(x, x).size() == 1":
        _exactly_one("slack", "webhook", "email"),
    "has(self.url) != has(self.urlSecretRef)": _exactly_one("url", "urlSecretRef"),
    "has(self.http) || has(self.service)": {"anyOf": [_required("http"), _required("service")]},
    "has(self.scaleDown) || has(self.alertmanager)":
        {"anyOf": [_required("scaleDown"), _required("alertmanager")]},
    "has(self.application) || has(self.database) || has(self.secrets) || has(self.certificates)":
        {"anyOf": [_required("application"), _required("database"), _required("secrets"),
                   _required("certificates")]},
}


@lru_cache(maxsize=1)
def crd_spec_schema() -> dict:
    """spec's schema exactly as the committed CRD has it (x-kubernetes-* keys included)."""
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _go_pattern(pattern: str) -> str:
    """An RE2 pattern (the whole string, ASCII \\s) as a Python pattern with the same matches."""
    out, in_class, i = [], False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            esc = pattern[i:i + 2]
            if esc == r"\s":
                assert in_class, f"\\s outside a character class in {pattern!r}: translate it"
                # Go's \s; with GO_WHITESPACE_ONLY off, also the rest of Unicode's whitespace
                # (test_schema_model.py's xfail: the model's regex engine reads \s as Unicode).
                esc = r"\t\n\f\r " if GO_WHITESPACE_ONLY else r"\s\v"
            out.append(esc)
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        elif c == "$" and not in_class:
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


def json_schema(node: dict | None = None) -> dict:
    """The CRD's spec schema as plain JSON Schema (see the module's docstring)."""
    node = crd_spec_schema() if node is None else node
    out: dict = {}
    extra: list[dict] = []
    for key, value in node.items():
        if key == "x-kubernetes-validations":
            for rule in value:
                if rule["rule"] not in CEL_AS_JSON_SCHEMA:
                    raise KeyError(f"CEL rule not translated in {__file__}: {rule['rule']!r}")
                extra.append(CEL_AS_JSON_SCHEMA[rule["rule"]])
        elif key == "x-kubernetes-int-or-string":
            extra.append({"anyOf": [{"type": "integer", "minimum": -INT64 - 1, "maximum": INT64},
                                    {"type": "string"}]})
        elif key.startswith("x-kubernetes-") or key in ("description", "default", "format"):
            continue
        elif key == "properties":
            out[key] = {k: json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = json_schema(value)
        elif key == "pattern":
            out[key] = _go_pattern(value)
        else:
            out[key] = value
    if out.get("type") == "object":
        out.setdefault("additionalProperties", False)   # structural schemas prune/refuse the rest
    if out.get("type") == "integer":
        out.setdefault("minimum", -INT64 - 1)
        out.setdefault("maximum", INT64)
    if extra:
        out["allOf"] = extra
    return out


def _defaults(schema: dict, item: dict) -> dict:
    return {**{k: s["default"] for k, s in schema.get("properties", {}).items() if "default" in s},
            **item}


def unique_map_keys(value, schema: dict | None = None):
    """`value` with each list-type map's duplicates (by its keys, defaults applied) dropped."""
    schema = crd_spec_schema() if schema is None else schema
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: unique_map_keys(v, props.get(k) or (extra if isinstance(extra, dict) else {}))
                for k, v in value.items()}
    if isinstance(value, list):
        items = [unique_map_keys(v, schema.get("items", {})) for v in value]
        keys = schema.get("x-kubernetes-list-map-keys")
        if not keys:
            return items
        seen, out = set(), []
        for item in items:
            full = _defaults(schema["items"], item) if isinstance(item, dict) else {}
            key = tuple(repr(full.get(k)) for k in keys)
            if key not in seen:
                seen.add(key)
                out.append(item)
        return out
    return value


def narrowed(schema: dict, path: str, replacement: dict) -> dict:
    """A copy of `schema` with the node at `path` (properties by name, `[]` for items, `*` for
    additionalProperties, dot-separated) replaced by `replacement`; a path that is not in the
    schema fails, so a renamed field is noticed."""
    schema = copy.deepcopy(schema)
    parts = path.split(".")
    node = schema
    for part in parts[:-1]:
        node = node["items"] if part == "[]" else node["properties"][part]
    last = parts[-1]
    if last == "[]":
        node["items"] = replacement
    else:
        assert last in node["properties"], path
        node["properties"][last] = replacement
    return schema


def specs(schema: dict | None = None) -> st.SearchStrategy[dict]:
    """Specs the CRD's schema accepts (`schema`: a plain JSON Schema from json_schema)."""
    return from_schema(json_schema() if schema is None else schema).map(unique_map_keys)


# --- mutations: a valid spec with one thing broken -------------------------------------------

HOSTILE_STRINGS = st.sampled_from([
    "", " ", "\x00", "line\nbreak", "tab\there", "\x1b[31mred\x1b[0m", "\u202eevil", "\ud7ff",
    "ünïcödé", "日本語", "🙂" * 10, "a" * 100_000, "x" * 254, "../../etc/passwd", "%(name)s",
    "'; DROP TABLE users; --", "${HOME}", "{{ .Values }}", "\r\n\r\nHTTP/1.1 200 OK", "null",
]) | st.text(min_size=1, max_size=300)

WRONG_TYPES = st.sampled_from([None, True, 0, -1, 1.5, 2**70, "", "x", [], [1], {}, {"a": 1}])


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _get(value, path):
    for p in path:
        value = value[p]
    return value


def _set(value, path, new):
    value = copy.deepcopy(value)
    _get(value, path[:-1])[path[-1]] = new     # a new key, when path[-1] is not in a dict yet
    return value


def _delete(value, path):
    value = copy.deepcopy(value)
    parent = _get(value, path[:-1])
    if isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent.pop(path[-1])
    return value


@st.composite
def mutated(draw, valid: st.SearchStrategy[dict]) -> tuple[str, dict]:
    """(what was broken, the spec): a valid spec with one field of a wrong type, an unknown
    field, a number out of range, a hostile string, or something removed."""
    spec = draw(valid)
    paths = [p for p in _paths(spec) if p]
    path = draw(st.sampled_from(paths))
    kind = draw(st.sampled_from(["type", "unknown", "number", "string", "remove"]))
    here = _get(spec, path)
    if kind == "unknown":
        parents = [p for p in [(), *paths] if isinstance(_get(spec, p), dict)]
        parent = draw(st.sampled_from(parents))
        name = draw(st.sampled_from(["force", "image", "Severity", "dry_run", "x-extra", ""]))
        return f"unknown field {name!r} at {parent}", _set(spec, (*parent, name), draw(WRONG_TYPES))
    if kind == "number":
        ints = [p for p in paths if type(_get(spec, p)) is int]
        if ints:
            path = draw(st.sampled_from(ints))
            return f"number at {path}", _set(spec, path, draw(st.sampled_from(
                [-1, 0, 10**6, 2**31, 2**63, -(2**63) - 1, 10**30])))
    if kind == "string":
        strs = [p for p in paths if isinstance(_get(spec, p), str)]
        if strs:
            path = draw(st.sampled_from(strs))
            return f"string at {path}", _set(spec, path, draw(HOSTILE_STRINGS))
    if kind == "remove":
        return f"removed {path}", _delete(spec, path)
    new = draw(WRONG_TYPES.filter(lambda v: type(v) is not type(here)))
    return f"type at {path}", _set(spec, path, new)


def examples(smoke: int) -> int:
    """`smoke` examples (the CI run), or REWIND_FUZZ_EXAMPLES (the long tier, `make fuzz`)."""
    return int(os.environ.get("REWIND_FUZZ_EXAMPLES") or smoke)


def is_camel_case(reason: str) -> bool:
    return re.fullmatch(r"[A-Z][A-Za-z0-9]*", reason or "") is not None
