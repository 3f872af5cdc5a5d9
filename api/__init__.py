"""The HTTP receiver: webhook leads in, read views and health out (``api.app:create_app``)."""
