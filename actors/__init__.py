"""Ray actors of the pipeline: the event contract, validation, partition consumers, sinks.

Nothing here imports ``gateway`` or ``cluster``: configuration arrives as msgspec Structs.
"""
