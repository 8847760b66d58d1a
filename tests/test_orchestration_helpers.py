"""Prefect glue that works without a server: limit names, the task-runner switch, map_step and
teacher_slot outside a flow run. (Inside flow runs: tests/test_deploy_integration.py.)"""

from __future__ import annotations

import pytest

from flows.orchestration import map_step, step, task_runner, teacher_limit_name, teacher_slot


@pytest.mark.parametrize("endpoint,name", [
    ("http://10.0.0.5:8000/v1", "teacher-10.0.0.5-8000-v1"),
    ("https://api.openai.com/v1/", "teacher-api.openai.com-v1"),
    ("127.0.0.1:8080", "teacher-127.0.0.1-8080"),
    ("llamacpp:smollm2-135m", "teacher-llamacpp-smollm2-135m"),
])
def test_teacher_limit_names_are_valid_prefect_names(endpoint, name):
    got = teacher_limit_name(endpoint)
    assert got == name
    assert not set("/%&><") & set(got)


def test_replicas_get_their_own_limits():
    assert teacher_limit_name("http://gpu-1:8000/v1") != teacher_limit_name("http://gpu-2:8000/v1")


def test_teacher_slot_outside_a_flow_run_is_a_no_op():
    with teacher_slot("http://127.0.0.1:9/v1") as limit:
        assert limit is None


@step(name="square")
def square(x: int, *, plus: int = 0) -> int:
    return x * x + plus


def test_map_step_outside_a_flow_is_a_plain_ordered_loop():
    assert map_step(square, [3, 1, 2], plus=1) == [10, 2, 5]


def test_map_step_needs_a_step():
    with pytest.raises(TypeError, match="not a @step"):
        map_step(lambda x: x, [1])


def test_task_runner_from_environment(monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner

    monkeypatch.delenv("STAIRS_TASK_RUNNER", raising=False)
    assert isinstance(task_runner(), ThreadPoolTaskRunner)
    monkeypatch.setenv("STAIRS_MAX_WORKERS", "3")
    assert task_runner()._max_workers == 3
    monkeypatch.setenv("STAIRS_TASK_RUNNER", "spark")
    with pytest.raises(ValueError, match="thread, dask, ray"):
        task_runner()
    monkeypatch.setenv("STAIRS_TASK_RUNNER", "thread")
    monkeypatch.setenv("STAIRS_MAX_WORKERS", "many")
    with pytest.raises(ValueError, match="STAIRS_MAX_WORKERS"):
        task_runner()


def test_dask_runner_settings(monkeypatch):
    pytest.importorskip("prefect_dask")
    monkeypatch.setenv("STAIRS_TASK_RUNNER", "dask")
    monkeypatch.setenv("STAIRS_TASK_RUNNER_ADDRESS", "tcp://10.1.2.3:8786")
    assert task_runner().address == "tcp://10.1.2.3:8786"
    monkeypatch.delenv("STAIRS_TASK_RUNNER_ADDRESS")
    monkeypatch.setenv("STAIRS_MAX_WORKERS", "2")
    kwargs = task_runner().cluster_kwargs
    assert kwargs["n_workers"] == 2 and kwargs["host"] == "127.0.0.1"


def test_ray_runner_without_the_extra_names_it(monkeypatch):
    try:
        import prefect_ray  # noqa: F401
        pytest.skip("prefect-ray is installed")
    except ImportError:
        pass
    monkeypatch.setenv("STAIRS_TASK_RUNNER", "ray")
    with pytest.raises(RuntimeError, match=r"stairs\[ray\]"):
        task_runner()
