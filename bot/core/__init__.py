"""bot/core package."""
