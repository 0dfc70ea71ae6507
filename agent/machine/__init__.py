"""What this machine is, as the metadata reports it: the OS, node, the git branch, and whether
this install can upgrade itself."""
