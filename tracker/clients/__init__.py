"""The upstream clients (retailCRM, UIS) and the gate that paces their requests."""
