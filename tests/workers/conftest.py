from tests.service.fixtures import _clean_jobs, artifacts, client, pg_url, settings, small_library  # noqa: F401
