"""Persistence and the credit rules: models, engine and sessions, the ledger.

Nothing here imports ``worker`` or ``api``; configuration is passed in.
"""
