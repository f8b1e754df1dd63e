"""How flexflow names itself to the API: one ``User-Agent`` for every request it sends.

Kept apart from the calls so the result downloads (:mod:`flexflow.client.results`) send the same
value without importing the call machinery.
"""

from __future__ import annotations

from flexflow import __version__

#: Sent on every request, so the API's operators can tell flexflow's traffic (and its version) apart.
USER_AGENT = f"flexflow/{__version__}"
USER_AGENT_HEADER = "User-Agent"
