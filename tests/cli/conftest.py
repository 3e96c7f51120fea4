"""The service tests' loaded namespaces, for the operator commands' tests."""

from tests.service.conftest import noida_setup, setup  # noqa: F401 (fixtures)
