"""What every part leans on and that knows nothing of the protocol: private files, paths,
bounded subprocesses, the clock, logs, exit codes, the CAs and proxy clients use."""
