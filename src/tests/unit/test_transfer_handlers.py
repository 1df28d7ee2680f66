"""The transfer and batch handlers parse bodies through the one parse-and-problem path (issue 10 item 1): a
value only the generated models refuse is a 400 naming the field, and the service is never reached."""

from __future__ import annotations

import pytest

from hpc.api.handlers import transfers as handlers
from hpc.errors import InvalidInput


def test_a_request_only_the_models_refuse_is_a_400_not_a_500(monkeypatch):
    class Unreachable:
        def __getattr__(self, name):
            if name in ("transfers", "batches"):
                return self

            def unreachable(*args, **kwargs):
                raise AssertionError("the service must not be reached")

            return unreachable

    monkeypatch.setattr(handlers, "caller", lambda: None)
    monkeypatch.setattr(handlers, "gateway", Unreachable)
    for handler, body, field in (
        (handlers.create_data_transfer, {"src": 7, "dst": "x", "infrastructure": "i"}, "src"),
        (handlers.create_s3_result_transfer, {"src": "x"}, "endpoint"),
        (handlers.create_data_batch, {"files": [{"path": "a"}], "dst": "d", "infrastructure": "i"}, "files.0.src"),
    ):
        with pytest.raises(InvalidInput) as refused:
            handler(body)
        assert refused.value.field == field
