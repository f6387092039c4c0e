"""teamsbc: a Microsoft Teams Direct Routing SBC."""
__version__ = "0.1.0"
MODEL = "sbc"  # X-MS-SBC: teamsbc/<model>/<version>
