"""The Discord adapter: slash commands, persistent buttons and result delivery over the core.

Start it with :func:`bot.discord.client.start_discord`; see docs/discord.md for the setup.
"""
