from tests.service.fixtures import (  # noqa: F401
    _clean_jobs,
    app_with,
    artifacts,
    client,
    pg_url,
    settings,
    small_library,
)
