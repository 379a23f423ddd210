"""entrgi's Hydra configs, installed as the package `entrgi.conf` and read as `pkg://entrgi.conf`."""
