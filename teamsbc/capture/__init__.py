"""SIP capture: HEPv3 export to a Homer collector (`hep`), and per-call traces on demand
(`traces`); their settings, the `capture` section of the config, in `settings`.

TLS hides the Teams leg from tcpdump; the shell hands every SIP message to the observers as
bytes on the wire AFTER decryption, so both exports show the Teams leg in clear.

    hep = HepObserver(HostPort("10.0.0.9", 9060), agent_id=2001, password=None)
    tracer = CallTracer(Path("/var/lib/teamsbc/traces"), fmt="both")
    observers.add(hep); observers.add(tracer)
    tracer.trace_call("abc@pbx")            # that Call-ID, until it ends (admin: POST /trace)
    tracer.trace_number("+4420", calls=1)   # the next call whose caller or callee starts so
    hep.close(); tracer.close()

The package face imports nothing: config imports `capture.settings` alone, never the runtime.
"""
