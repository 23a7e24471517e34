"""Whatever the CRD's schema accepts, the operator's model reads: the API server stores any spec
its schema admits, and an object the pydantic model (RollbackSpec) refused would be one the
operator cannot act on, or even report on. No cluster: the schema is the committed CRD's."""

from __future__ import annotations

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from fuzzspecs import examples, json_schema, mutated, specs
from rewind.api.v1alpha1 import RollbackSpec

FAST = settings(max_examples=examples(30), derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@FAST
@given(specs())
def test_model_reads_every_spec_the_crd_accepts(spec):
    jsonschema.validate(spec, json_schema())      # the generator's own promise, checked
    RollbackSpec.model_validate(spec)


@FAST
@given(mutated(specs()))
def test_model_reads_every_mutated_spec_the_crd_accepts(case):
    """The mutations the schema still accepts (a hostile string within its pattern and length,
    a number within range, an optional field removed) the model reads as well."""
    _, spec = case
    try:
        jsonschema.validate(spec, json_schema())
    except jsonschema.ValidationError:
        return
    RollbackSpec.model_validate(spec)


BASE = {"severity": "High", "reason": "r", "application": [{"name": "web"}]}


@pytest.mark.parametrize("char", ["\xa0", "\x85", "\u2003", "\v"])
@pytest.mark.parametrize("field", ["url", "email"])
def test_model_and_crd_agree_on_whitespace(field, char):
    if field == "url":
        spec = {**BASE, "verification": {"http": [{"name": "a", "url": f"http://127.0.0.1/{char}"}]}}
    else:
        spec = {**BASE, "notifications": [{"name": "a", "email": {
            "smtp": {"host": "127.0.0.1"}, "from": f"a{char}b@example.com", "to": ["c@example.com"]}}]}
    jsonschema.validate(spec, _go_schema())        # what the API server accepts...
    RollbackSpec.model_validate(spec)              # ...the model must read


def _go_schema():
    import fuzzspecs

    saved, fuzzspecs.GO_WHITESPACE_ONLY = fuzzspecs.GO_WHITESPACE_ONLY, True
    try:
        return json_schema()
    finally:
        fuzzspecs.GO_WHITESPACE_ONLY = saved
