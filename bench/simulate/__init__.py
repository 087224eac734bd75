"""`pollen bench simulate`: a discrete-event simulation of a pollen cluster.

The swarm's policies run as they are (membership, rendezvous, the piece picker, the choker,
bans: the pure objects of peer/cluster and peer/swarm); what is modelled is everything around
them: the network (access links shared max-min fairly, a latency for every message), the
registry (one more host with its own uplink), the node's driver (who it asks, what it answers,
upload slots, links) and the clients pulling an image.

Modules, one job each:
    events.py   the clock: timed callbacks in time order
    network.py  access links and the max-min fair rates of the flows over them
    image.py    the blobs of the simulated image (sizes as `bench image` writes them)
    uploads.py  a node's upload slots and the per-link send queues
    fetch.py    one blob on one node: the swarm fetch around a PiecePicker, the upstream fetch
    node.py     one simulated node: membership, links, the messages it answers
    clients.py  the pulling client of each node (K blobs at a time)
    world.py    the whole run: nodes, message delivery, deaths and joins, when to stop
    report.py   the table, JSON document and chart (`bench swarm`'s, where they fit)
    cli.py      the click command
"""
