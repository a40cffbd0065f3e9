"""Placement bundles: a role's node_resource keeps its actors on the nodes marked with it."""

from toolexpander.actors.group import NODE_MARK, _bundles


def test_bundles_ask_for_the_role_mark_only_when_one_is_set():
    assert _bundles(2, 1.0, 0.0, None) == [{"CPU": 1.0}, {"CPU": 1.0}]
    assert _bundles(1, 4.0, 1.0, "rollout") == [{"CPU": 4.0, "GPU": 1.0, "rollout": NODE_MARK}]
    assert 1000 * NODE_MARK <= 1   # a node marked with amount 1 holds a thousand bundles
