"""Running as a service: systemd and launchd files, sd_notify, the single-instance lock."""
