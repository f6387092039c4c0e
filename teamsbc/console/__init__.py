"""The operator's console: a web console on the admin listener (`web`, `pages`, `auth`), the
data it shows (`recorder`: the SIP of recent calls; `history`: 24 h of trunk health and call
counts; `status`, `ladder`, `certinfo`, `configview`) and `teamsbc status` in a terminal
(`term`). Nothing is imported at package level: reading the config never loads aiohttp."""
