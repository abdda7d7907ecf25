"""Today's wire output of every API, byte for byte: each case of tests/wire_corpus.py against its recording.

After an intended change to the wire output, re-record with `python -m tests.wire_corpus record`
and review the diff of tests/data/wire_corpus/ like any other change.
"""

from collections.abc import Iterator

import pytest

from tests.wire_corpus import CASES, Case, CorpusRun, RunningServer, corpus_servers, record_diff, recorded_path


@pytest.fixture(scope="module")
def corpus_servers_running(tmp_path_factory) -> Iterator[dict[str, RunningServer]]:
    """The real-model, scripted and locked servers, over fixture models in a fresh directory."""
    with corpus_servers(tmp_path_factory.mktemp("wire-corpus")) as servers:
        yield servers


@pytest.fixture(scope="module")
def corpus(corpus_servers_running) -> Iterator[CorpusRun]:
    """One corpus run: each case sees the same server history as when it was recorded."""
    run = CorpusRun(corpus_servers_running)
    yield run
    run.close()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_wire_output_matches_recording(corpus: CorpusRun, case: Case) -> None:
    path = recorded_path(case)
    assert path.exists(), f"{path.name} is not recorded: run `python -m tests.wire_corpus record`"
    diff = record_diff(case, path.read_bytes(), corpus.record(case))
    if diff:
        pytest.fail(f"the wire output of {case.name} changed:\n{diff}", pytrace=False)
