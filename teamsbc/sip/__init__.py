"""Sans-IO SIP core: messages, URIs, stream framing and transactions. No sockets in here."""
