"""`radium-admin profile save|list|remove`: saved vCenter connections (never their passwords)."""

HELP = "saved vCenter connections (~/.config/radium/vcenter.toml; passwords only in the system keyring)"
