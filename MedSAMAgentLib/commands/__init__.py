"""Subcommands of ``medsam-agent`` (see ``cli.COMMAND_MODULES``)."""
