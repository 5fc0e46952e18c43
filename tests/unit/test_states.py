"""The list of task states that the metrics (and anything else) iterate is complete."""

from miniflow.store import states, transitions


def test_every_state_of_the_state_machine_is_listed() -> None:
    assert set(states.TASK_STATES) == set(transitions.ALLOWED)
    assert len(states.TASK_STATES) == len(set(states.TASK_STATES))


def test_the_state_gauge_lists_every_state_from_the_start() -> None:
    from miniflow.scheduler import metrics

    metrics.set_state_counts({}, {})
    value = metrics.REGISTRY.get_sample_value(
        "miniflow_task_instances", {"state": states.UP_FOR_RESCHEDULE}
    )
    assert value == 0.0
