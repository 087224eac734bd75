"""The network model on its own: max-min shares worked out by hand, and the timing of
transfers around the rate steps."""

from __future__ import annotations

import pytest

from bench.simulate.events import EventQueue
from bench.simulate.network import Network, max_min_rates


def test_two_flows_share_an_uplink_evenly() -> None:
    # Host 0 sends to hosts 1 and 2; only its 10 B/s uplink limits them.
    rates = max_min_rates([(0, 1), (0, 2)], [10, 10, 10], [None, 100, 100])
    assert rates == pytest.approx([5, 5])


def test_a_flow_limited_by_its_downlink_gets_less_and_the_rest_goes_to_the_other() -> None:
    # Host 1 can take 2 B/s; the 8 B/s its flow cannot use go to the flow to host 2.
    rates = max_min_rates([(0, 1), (0, 2)], [10, 10, 10], [None, 2, None])
    assert rates == pytest.approx([2, 8])


def test_leftover_capacity_fills_level_by_level() -> None:
    # Receiver 2 (6 B/s down) is shared by senders 0 and 1: 3 each. Sender 1's uplink
    # (10 B/s) then has 7 left for its other flow, to host 3; sender 0's uplink keeps 7 idle.
    rates = max_min_rates([(0, 2), (1, 2), (1, 3)], [10, 10, 10, 10], [None, None, 6, 100])
    assert rates == pytest.approx([3, 3, 7])


def test_a_downlink_shared_by_many_senders() -> None:
    # Four senders into one 8 B/s downlink: 2 each, whatever their uplinks.
    flows = [(s, 4) for s in range(4)]
    rates = max_min_rates(flows, [10, 1, 10, 10, 10], [None] * 4 + [8.0])
    # Sender 1 is held to 1 by its own uplink; the other three split the remaining 7.
    assert rates == pytest.approx([7 / 3, 1, 7 / 3, 7 / 3])


def test_no_flows_no_rates() -> None:
    assert max_min_rates([], [1], [None]) == []


class Pieces:
    """A feeder with a queue of transfer sizes; records when each one ended."""

    def __init__(self, queue: EventQueue, sizes: list[int]) -> None:
        self.queue = queue
        self.sizes = list(sizes)
        self.ended: list[float] = []

    def next_transfer(self, now: float) -> int | None:
        return self.sizes[0] if self.sizes else None

    def transfer_done(self, now: float, nbytes: int) -> None:
        assert nbytes == self.sizes.pop(0)
        self.ended.append(now)


def run(queue: EventQueue, until: float = 100.0) -> None:
    queue.run(until, 1000, lambda: None)


def test_a_flow_waits_for_the_next_step_then_keeps_its_rate_across_transfers() -> None:
    queue = EventQueue()
    network = Network(queue, [10.0, 10.0], [None, 10.0], rate_step=0.05)
    feeder = Pieces(queue, [10, 10])
    network.wake(network.open(0, 1, feeder))
    run(queue)
    # The first rate comes at the step (0.05 s); the next transfer on the same connection
    # goes on at once, at the same rate.
    assert feeder.ended == pytest.approx([1.05, 2.05])
    assert network.recomputations == 2  # the start, and the flow's end (nothing to share)


def test_a_second_flow_halves_the_first_from_the_next_step_on() -> None:
    queue = EventQueue()
    network = Network(queue, [10.0, 10.0, 10.0], [None, None, None], rate_step=0.5)
    first, second = Pieces(queue, [20]), Pieces(queue, [5])
    network.wake(network.open(0, 1, first))
    queue.at(1.2, lambda _: network.wake(network.open(0, 2, second)))
    run(queue)
    # first: 10 B/s from 0.5 s; at 1.5 s (the step after the second flow started) it has
    # 10 B left and both get 5 B/s: the second ends at 2.5 s. The capacity it leaves goes
    # to the first at the next step, 3.0 s, when the first has 2.5 B left: done at 3.25 s.
    assert second.ended == pytest.approx([2.5])
    assert first.ended == pytest.approx([3.25])


def test_a_closed_flow_counts_what_it_sent() -> None:
    queue = EventQueue()
    network = Network(queue, [10.0, 10.0], [None, None], rate_step=0.5)
    feeder = Pieces(queue, [100])
    flow = network.open(0, 1, feeder)
    network.wake(flow)
    queue.at(2.5, lambda _: network.close(flow))
    run(queue)
    assert feeder.ended == []
    assert flow.sent == 20  # 10 B/s from 0.5 s to 2.5 s
    assert not network.active
