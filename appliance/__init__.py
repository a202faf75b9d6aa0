"""What makes a VM a Radium appliance: OVF descriptor, first boot, systemd units (see README.md)."""
