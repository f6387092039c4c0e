"""teamsbc: a Microsoft Teams Direct Routing SBC."""
__version__ = "0.1.0"
MODEL = "proxy"
