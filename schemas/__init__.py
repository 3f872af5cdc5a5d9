"""The contract: every message, payload and view casecredits reads or writes.

Nothing here imports from ``db``, ``worker`` or ``api``; the main application
can validate against the JSON Schemas these models export
(``casecredits schemas export DIR``).
"""
