"""Shared pytest fixtures.

`ray_session`: a local Ray (2 CPUs, no dashboard) for the tests of one module, shut down at the
module's end (only if this fixture started it). Algorithms built outside Tune write their
log directory under ray.tune's DEFAULT_STORAGE_PATH (~/ray_results); the fixture points it at
a temporary directory for the module's duration.
"""

import pytest


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
