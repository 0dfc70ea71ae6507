"""Installing, removing and inspecting envagent as a service: systemd units and launchd plists,
made from the templates in service_files/."""
