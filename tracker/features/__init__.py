"""Beyond the call flow: routing, click-to-call, status sync, sweeper, retailCRM callbacks,
reconciliation."""
