"""`generate`'s spawned workers: a failure is named with its exit status. Kept apart from the other generate
tests so that a worker, which imports this module to unpickle its job, starts without torch."""

import pytest

from iprm.generation.workers import spawn


class FailingJob:
    """A job whose worker 1 fails, as a worker out of memory would."""

    def run_worker(self, rank: int, world_size: int, local_rank: int = 0) -> None:
        if rank == 1:
            raise SystemExit(3)


@pytest.mark.integration
def test_a_failed_worker_is_named_with_its_exit_status(tmp_path):
    with pytest.raises(RuntimeError, match=r"worker 1 \(exit status 3\) failed.*rerun to resume"):
        spawn(FailingJob(), 2, 1, tmp_path)
    assert not list(tmp_path.glob(".job-*"))  # the pickled job is removed
