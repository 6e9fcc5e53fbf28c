"""The Cloudmarket provider agent: provisions VMs on a provider's own host and reports to the platform.

This package imports no Django module, so it runs on a host that has only the agent installed.
Run it with `python -m provisioning.agent` or the `cloudmarket-agent` command (docs/agent.md).
"""

VERSION = "0.1.0"
