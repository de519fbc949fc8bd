"""Shared pytest fixtures.

`one_thread`: torch on one thread for the test (small tensors: threads only add overhead, and
on 2 shared cores OpenMP threads spin against other processes). A module uses it with
`pytestmark = pytest.mark.usefixtures("one_thread")`.

`ray_session`: a local Ray (2 CPUs, no dashboard) for the tests of one module, shut down at the
module's end (only if this fixture started it). Algorithms built outside Tune write their
log directory under ray.tune's DEFAULT_STORAGE_PATH (~/ray_results); the fixture points it at
a temporary directory for the module's duration.
"""

import pytest
import torch


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    import ray
    import ray.tune.trainable.trainable as trainable

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainable, "DEFAULT_STORAGE_PATH",
                      str(tmp_path_factory.mktemp("ray_results")))
        started = not ray.is_initialized()
        if started:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray
        if started:
            ray.shutdown()
