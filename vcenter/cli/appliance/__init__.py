"""`radium-admin appliance deploy|list|status|remove`: Radium appliances as VMs in vCenter."""

HELP = "deploy Radium appliances from the OVF into vCenter, list them, check their health, remove them"
