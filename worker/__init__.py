"""The worker side: settings, logging, the broker, actors, scheduler and CLI."""
