"""Thin handlers, one per operationId: validate, call a service, return a model."""
