"""tracker: a self-hosted daemon connecting the UIS cloud PBX to retailCRM."""

__version__ = "0.1.0"
