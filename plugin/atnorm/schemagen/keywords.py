"""Placeholders on the docs pages: `{{site.data.keyword.X}}` as display text or as a service."""

from __future__ import annotations

import re
from collections import Counter
from typing import Optional

KEYWORD = re.compile(r"\{\{\s*site\.data\.keyword\.([A-Za-z0-9_.-]+?)\s*\}\}")

# Display text for the keywords these pages use most; others render as the bare keyword.
_KEYWORD_TEXT = {
    "cloud": "IBM Cloud",
    "cloud_notm": "IBM Cloud",
    "Bluemix": "IBM Cloud",
    "Bluemix_notm": "IBM Cloud",
    "IBM_notm": "IBM",
    "logs_full": "IBM Cloud Logs",
    "logs_full_notm": "IBM Cloud Logs",
    "atracker_full": "IBM Cloud Activity Tracker Event Routing",
    "atracker_full_notm": "IBM Cloud Activity Tracker Event Routing",
    "atracker_short": "Activity Tracker Event Routing",
    "at_full": "IBM Cloud Activity Tracker",
    "at_full_notm": "IBM Cloud Activity Tracker",
    "at_short": "Activity Tracker",
    "cloudaccesstrailfull": "IBM Cloud Activity Tracker",
    "cloudaccesstrailshort": "Activity Tracker",
    "vmwaresolutions_full": "IBM Cloud for VMware Solutions",
    "vmwaresolutions_short": "VMware Solutions",
    "vcf-classic": "VMware Cloud Foundation for Classic",
    "vcf-classic-short": "VCF for Classic",
    "dns_short": "DNS Services",
    "cis_short_notm": "CIS",
    "cis_full_notm": "IBM Cloud Internet Services",
    "keymanagementserviceshort": "Key Protect",
    "keymanagementservicefull": "IBM Key Protect for IBM Cloud",
    "cos_short": "Object Storage",
    "cos_full": "IBM Cloud Object Storage",
    "cos_full_notm": "IBM Cloud Object Storage",
    "messagehub": "Event Streams",
    "appid_short_notm": "App ID",
    "codeengineshort": "Code Engine",
    "codeenginefull": "IBM Cloud Code Engine",
    "codeenginefull_notm": "IBM Cloud Code Engine",
    "tg_full_notm": "IBM Cloud Transit Gateway",
    "satelliteshort": "Satellite",
    "satellitelong_notm": "IBM Cloud Satellite",
    "openshiftlong": "Red Hat OpenShift on IBM Cloud",
    "openshiftlong_notm": "Red Hat OpenShift on IBM Cloud",
    "secrets-manager_short": "Secrets Manager",
    "secrets-manager_full": "IBM Cloud Secrets Manager",
    "speechtotextshort": "Speech to Text",
    "speechtotextfull": "IBM Watson Speech to Text",
    "logs_routing_full_notm": "IBM Cloud Logs Routing",
    "powerSys_notm": "Power Virtual Server",
    "powerSysFull": "IBM Power Virtual Server",
    "databases-for": "IBM Cloud Databases",
}

# Keyword -> action service prefix, as the docs pages pair them (the keyword names the
# service in the page title, the tables use the prefix). Page evidence comes first.
_KEYWORD_SERVICE = {
    "dns_short": "dns-svcs",
    "cis_short_notm": "internet-svcs",
    "cis_full_notm": "internet-svcs",
    "keymanagementserviceshort": "kms",
    "keymanagementservicefull": "kms",
    "cos_short": "cloud-object-storage",
    "cos_full": "cloud-object-storage",
    "cos_full_notm": "cloud-object-storage",
    "logs_full": "logs",
    "logs_full_notm": "logs",
    "vmwaresolutions_short": "vmware-solutions",
    "vmwaresolutions_full": "vmware-solutions",
    "messagehub": "event-streams",
    "appid_short_notm": "appid",
    "codeengineshort": "codeengine",
    "tg_full_notm": "transit",
    "satelliteshort": "satellite",
    "satellitelong_notm": "satellite",
    "openshiftlong_notm": "containers-kubernetes",
    "secrets-manager_short": "secrets-manager",
    "speechtotextshort": "speech-to-text",
    "logs_routing_full_notm": "logs-router",
    "powerSys_notm": "power-iaas",
}


class Keywords:
    """Resolves keyword placeholders, as display text or as the service of an action."""

    def __init__(self, subcollection: str = "", page_services: Optional[Counter] = None):
        self.subcollection = subcollection
        self.page_services = page_services or Counter()

    @staticmethod
    def text(s: str) -> str:
        return KEYWORD.sub(lambda m: _KEYWORD_TEXT.get(m.group(1), m.group(1)), s)

    def service(self, keyword: str) -> Optional[str]:
        """The service prefix `keyword` stands for, from the page itself where possible.

        Order: the built-in pairing if the page uses that prefix; the front matter
        `subcollection` if the page uses that prefix; the only prefix the page uses;
        the built-in pairing alone. Otherwise None (the caller reports it).
        """
        known = _KEYWORD_SERVICE.get(keyword)
        used = self.page_services
        if known and known in used:
            return known
        if self.subcollection and self.subcollection in used:
            return self.subcollection
        if len(used) == 1:
            return next(iter(used))
        return known
