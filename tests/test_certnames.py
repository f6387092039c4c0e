"""teamsbc.certnames: the one certificate-name rule the SBC, the doctor and the gate share."""
from __future__ import annotations

import pytest

from teamsbc.certnames import dns_names, name_covered, teams_name_problem

SIP = "sip.pstnhub.microsoft.com"


@pytest.mark.parametrize("wanted,names,covered", [
    (SIP, [SIP], True),                                          # exact
    (SIP, ["*.pstnhub.microsoft.com"], True),                    # wildcard: one label
    (SIP, ["*.microsoft.com"], False),                           # two labels: refused
    ("a.b.pstnhub.microsoft.com", ["*.pstnhub.microsoft.com"], False),
    ("pstnhub.microsoft.com", ["*.pstnhub.microsoft.com"], False),   # zero labels
    ("x.com", ["*.com"], False),                                 # a bare suffix covers nothing
    ("SIP.PSTNHub.Microsoft.com", [SIP], True),                  # case-insensitive
    (SIP, ["*.PSTNHUB.microsoft.COM"], True),
    (SIP + ".", [SIP], True),                                    # trailing dot
    ("*.sbc.example.com", ["*.sbc.example.com"], True),          # a wanted wildcard: only itself
    ("*.sbc.example.com", ["x.sbc.example.com"], False),
    (SIP, [], False),                                            # no names
    (SIP, ["sip2.pstnhub.microsoft.com"], False),
])
def test_name_covered(wanted, names, covered):
    assert name_covered(wanted, names) is covered


def test_teams_name_problem_words_and_any_of_wanted():
    assert teams_name_problem([SIP], [SIP]) is None
    assert teams_name_problem(["*.pstnhub.microsoft.com"], [SIP]) is None
    assert teams_name_problem(["sip.pstnhub.dod.teams.microsoft.us"],
                              [SIP, "sip.pstnhub.dod.teams.microsoft.us"]) is None
    assert teams_name_problem(["*.microsoft.com"], [SIP]) == \
        f"certificate names ['*.microsoft.com'] do not include {SIP}"
    assert teams_name_problem([], [SIP, "sip.pstnhub.gov.teams.microsoft.us"]) == \
        f"certificate names ['(none)'] do not include {SIP} or sip.pstnhub.gov.teams.microsoft.us"


def test_dns_names_from_getpeercert():
    cert = {"subject": ((("commonName", "x"),),),
            "subjectAltName": (("DNS", "SIP.pstnhub.microsoft.com"), ("IP Address", "192.0.2.1"),
                               ("DNS", "sip-du-a-us.pstnhub.microsoft.com"))}
    assert dns_names(cert) == [SIP, "sip-du-a-us.pstnhub.microsoft.com"]
    assert dns_names(None) == [] and dns_names({}) == []
