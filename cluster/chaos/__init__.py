"""``eventray chaos``: faults under load on the local stack, every acknowledged event counted.

``load`` (the retrying client), ``faults`` and ``ray_node``/``placement`` (what injects),
``scenarios`` (one fault each), ``progress``/``recovery`` (drain and time to recover),
``accounting`` (lost, duplicated), ``report`` (table and JSON), ``runner`` (one run).
"""
