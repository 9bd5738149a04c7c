"""How clients reach the sidecar: HTTP (with worker processes) and IPC; the IPC client the CLI uses."""
