"""`radium-admin appliance build|deploy|list|status|sessions|end-session|remove`: image and VMs."""

HELP = (
    "build the appliance image, deploy appliances from it into vCenter, list them, check their health, "
    "see and end their clients' sessions, remove them"
)
