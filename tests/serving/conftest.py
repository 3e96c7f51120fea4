from tests.service.conftest import noida_setup, setup  # noqa: F401 (fixtures)
