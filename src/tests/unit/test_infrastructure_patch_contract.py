"""The PATCH contract stays in step with the settings it changes."""

from __future__ import annotations

from pathlib import Path

import yaml

SPEC = yaml.safe_load((Path(__file__).resolve().parents[3] / "openapi" / "openapi.yaml").read_text())
SCHEMAS = SPEC["components"]["schemas"]


def test_reset_settings_names_every_setting():
    names = SCHEMAS["InfrastructurePatch"]["properties"]["reset_settings"]["items"]["enum"]
    assert sorted(names) == sorted(SCHEMAS["InfrastructureSettings"]["properties"])


def test_patch_takes_the_connection_fields_of_a_registration_but_never_name_or_scheduler():
    patch = SCHEMAS["InfrastructurePatch"]
    registration = set(SCHEMAS["Infrastructure"]["properties"])
    assert set(patch["properties"]) - {"reset_settings"} == registration - {"name", "scheduler"}
    assert patch["additionalProperties"] is False
