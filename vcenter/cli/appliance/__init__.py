"""`radium-admin appliance deploy|list|status|sessions|end-session|remove`: appliances as VMs in vCenter."""

HELP = (
    "deploy Radium appliances from the OVF into vCenter, list them, check their health, "
    "see and end their clients' sessions, remove them"
)
