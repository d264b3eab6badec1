"""Core's own plugins, registered through the same manager as third-party ones."""
