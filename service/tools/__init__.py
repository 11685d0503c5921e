"""Offline commands around the service: eval, calibrate, loadtest."""
