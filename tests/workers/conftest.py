import shutil

import pytest

from service.settings import Settings
from tests.library import make_corpus, make_parent
from tests.service.fixtures import _clean_jobs, artifacts, client, pg_url, settings, small_library  # noqa: F401


@pytest.fixture(scope="session")
def tiny_inputs(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:  # noqa: F811
    """A corpus and a tiny random parent placed where pipeline and elastic jobs may name them."""
    scratch = tmp_path_factory.mktemp("pipeline-inputs")
    corpus = make_corpus(settings.artifacts / "corpora" / "tiny-text")
    make_parent(scratch / "parent", corpus)
    shutil.copytree(scratch / "parent", settings.artifacts / "parents" / "tiny-parent")
    return "tiny-parent", "tiny-text"


@pytest.fixture
def no_earlier_work(settings: Settings) -> None:  # noqa: F811
    """Job ids restart at 1 in every test (the jobs table is truncated), so an earlier test's ``job-1`` work
    folder would be taken for this job's: start each test without any."""
    shutil.rmtree(settings.artifacts / "pipelines", ignore_errors=True)
